//! What an outbound speaks, from `kuma.io/protocol` or a port's
//! `appProtocol`: opaque bytes the sidecar carries whole, or HTTP it
//! balances request by request.

use serde::{Deserialize, Serialize};

/// The protocols a sidecar treats differently. `tls` and `kafka` (and any
/// value the sidecar does not know) are carried as TCP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    /// HTTP/1.1 to the endpoints.
    Http,
    /// HTTP/2 with prior knowledge (h2c) to the endpoints.
    Http2,
    /// HTTP/2 to the endpoints, with gRPC's retry conditions and local replies.
    Grpc,
}

impl Protocol {
    pub fn parse(value: &str) -> Self {
        match value {
            "http" => Self::Http,
            "http2" => Self::Http2,
            "grpc" => Self::Grpc,
            _ => Self::Tcp,
        }
    }

    pub fn is_tcp(&self) -> bool {
        *self == Self::Tcp
    }

    /// The protocols this one also is, most specific first (Kuma's
    /// protocol stacks: gRPC is HTTP/2 is TCP; HTTP/1.1 is TCP).
    fn stack(self) -> &'static [Protocol] {
        match self {
            Self::Grpc => &[Self::Grpc, Self::Http2, Self::Tcp],
            Self::Http2 => &[Self::Http2, Self::Tcp],
            Self::Http => &[Self::Http, Self::Tcp],
            Self::Tcp => &[Self::Tcp],
        }
    }

    /// The protocol two endpoints of one service both speak, as Kuma's
    /// `GetCommonProtocol`: gRPC and HTTP/2 are HTTP/2; HTTP/1.1 and
    /// HTTP/2 are only TCP.
    pub fn common(self, other: Self) -> Self {
        let theirs = other.stack();
        self.stack().iter().copied().find(|p| theirs.contains(p)).unwrap_or(Self::Tcp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Http2 => "http2",
            Self::Grpc => "grpc",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Protocol::{self, *};

    #[test]
    fn common_protocol_follows_kuma() {
        assert_eq!(Grpc.common(Grpc), Grpc);
        assert_eq!(Grpc.common(Http2), Http2);
        assert_eq!(Http2.common(Grpc), Http2);
        assert_eq!(Http.common(Http2), Tcp);
        assert_eq!(Http.common(Tcp), Tcp);
        assert_eq!(Protocol::parse("kafka"), Tcp);
        assert_eq!(Protocol::parse("tls"), Tcp);
    }
}
