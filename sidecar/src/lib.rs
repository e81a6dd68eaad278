//! The loopmesh sidecar: the data path of a task.
//!
//! # Layout
//!
//! - [`view`]: the mesh view (services, their VIP:port and endpoints), in the
//!   JSON form `/config` prints and `--view-file` reads (from `loopmesh-shared`).
//! - [`source`]: where the view comes from (the table, or a file) and the
//!   refresh loop that keeps the last good one serving through failures.
//! - [`listeners`]: the listeners, and how a new view reaches them without a
//!   restart (add, drain, swap endpoints).
//! - [`balance`]: which endpoint a new connection goes to: least connections
//!   by power of two choices, own availability zone first, passive health.
//! - [`http`]: `http`, `http2` and `grpc` outbounds, balanced per request,
//!   with timeouts, retries and local replies.
//! - [`proxy`]: one accept loop per listener, the connect with retries and
//!   timeouts, the idle timeout; [`pump`]: moving bytes (splice on Linux).
//! - [`task`]: the task's Dataplane and inbounds, and the ECS metadata endpoint.
//! - [`admin`]: `/ready`, `/metrics`, `/config`.
//!
//! The balancer picks from state it owns and never calls AWS.

pub mod admin;
pub mod balance;
pub mod certs;
pub mod http;
pub mod listeners;
pub mod proxy;
pub mod pump;
pub mod source;
pub mod task;
pub mod tls;
pub mod wake;
pub use loopmesh_shared::view;
