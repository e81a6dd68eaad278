# Shared by scripts/test, scripts/local-run and bench/run: the Python tools in
# a venv under .venv, and moto server on a free loopback port.

VENV=${LOOPMESH_VENV:-$PWD/.venv}
PY_REQUIREMENTS=scripts/requirements.txt

step() {
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name ($((SECONDS - t0))s)"
}

# Installs the Python tools once; reinstalls when the requirements change.
ensure_venv() {
  local stamp="$VENV/.requirements"
  if [ -x "$VENV/bin/python" ] && cmp -s "$PY_REQUIREMENTS" "$stamp"; then
    return
  fi
  echo "==> installing Python tools into .venv"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PY_REQUIREMENTS"
  cp "$PY_REQUIREMENTS" "$stamp"
}

# The deploy path's tools (aws-sam-cli pins its own aws-sam-translator, so
# it lives apart from cfn-lint), and the arm64 standard library the
# functions are built for.
SAM_VENV=${LOOPMESH_SAM_VENV:-$PWD/.venv-sam}
ensure_sam() {
  local stamp="$SAM_VENV/.requirements"
  if ! { [ -x "$SAM_VENV/bin/sam" ] && cmp -s scripts/requirements-sam.txt "$stamp"; }; then
    echo "==> installing aws-sam-cli and cargo-lambda into .venv-sam"
    python3 -m venv "$SAM_VENV"
    "$SAM_VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-sam.txt
    cp scripts/requirements-sam.txt "$stamp"
  fi
  rustup target list --installed | grep -q '^aarch64-unknown-linux-gnu$' || rustup target add aarch64-unknown-linux-gnu
}

# `sam build` as the README's deploy command runs it: every function of the template
# for provided.al2023 on arm64, cross-compiled by cargo-lambda with zig.
sam_build() {
  ensure_sam
  PATH="$SAM_VENV/bin:$PATH" "$SAM_VENV/bin/sam" build --beta-features
  ls -l .aws-sam/build/*/bootstrap
}

# Waits up to 30 s for something to listen on a loopback port.
wait_port() {
  "$VENV/bin/python" - "$1" <<'PY'
import socket, sys, time
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

free_port() {
  "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Starts moto server and exports the SDK's standard variables at it; the
# EXIT trap stops it whatever happens.
start_moto() {
  MOTO_PORT=$(free_port)
  MOTO_LOG=${MOTO_LOG:-$(mktemp -t moto.XXXXXX.log)}
  MOTO_PORT=$MOTO_PORT "$VENV/bin/python" tests/emulator.py 127.0.0.1 "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  on_exit "kill $MOTO_PID 2>/dev/null; wait $MOTO_PID 2>/dev/null"
  for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$MOTO_PORT/moto-api/')" 2>/dev/null; then
      break
    fi
    kill -0 "$MOTO_PID" 2>/dev/null || { cat "$MOTO_LOG"; echo "moto server did not start" >&2; exit 1; }
    sleep 0.1
  done
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  unset AWS_PROFILE
  echo "moto server on $AWS_ENDPOINT_URL (pid $MOTO_PID)"
}

# Runs the registered commands, newest first, when the script exits for any reason.
CLEANUPS=()
on_exit() {
  CLEANUPS+=("$1")
  trap run_cleanups EXIT
}
run_cleanups() {
  local i
  for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUPS[$i]}" || true
  done
}

# Starts `cargo lambda watch` (the Lambda runtime emulator, which builds each
# function on its first invocation) on a free loopback port.
start_lambda_watch() {
  LAMBDA_PORT=$(free_port)
  setsid "$VENV/bin/cargo-lambda" lambda watch --quiet -A 127.0.0.1 -P "$LAMBDA_PORT" >"${LAMBDA_LOG:-/dev/null}" 2>&1 &
  local pid=$!
  on_exit "kill -- -$pid 2>/dev/null"
  wait_port "$LAMBDA_PORT" || { cat "${LAMBDA_LOG:-/dev/null}"; echo "cargo lambda watch did not start" >&2; exit 1; }
  echo "cargo lambda watch on 127.0.0.1:$LAMBDA_PORT"
}

# Invokes a function through cargo lambda, as the README documents for users.
invoke() {
  "$VENV/bin/cargo-lambda" lambda invoke "$1" -A 127.0.0.1 -P "$LAMBDA_PORT" --data-file "$2"
  echo
}
