//! What went wrong with a request, and whose fault it was, as types.
//!
//! Every failure on the request path is classified by side before anything is counted:
//! an [`UpstreamFailure`] is the upstream's doing and counts against its breaker, its
//! attempts counter and its rollout; a [`ClientFault`] is the client's (bad framing, a body
//! cut short, a body that stalls) and never does. Rampart's own answers are [`OwnError`]s,
//! and the reasons for re-sending to stable are [`FallbackReason`]s, whose count sizes the
//! per-backend counter arrays.

use crate::body::ClientBodyError;
use http::StatusCode;

/// Why an upstream attempt failed, when the upstream is to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// The connection was refused or could not be made (TCP or TLS): nothing reached the
    /// upstream.
    ConnectRefused,
    /// The connection attempt timed out: nothing reached the upstream.
    ConnectTimeout,
    /// The HTTP/2 upstream refused the stream (REFUSED_STREAM, or above a GOAWAY's last
    /// stream id): it processed nothing.
    StreamRefused,
    /// No response headers within `request_timeout`.
    Timeout,
    /// Reset, closed or invalid response.
    Protocol,
}

impl UpstreamFailure {
    /// Whether the upstream certainly processed nothing, so any request may be re-sent.
    pub fn nothing_sent(self) -> bool {
        matches!(
            self,
            UpstreamFailure::ConnectRefused
                | UpstreamFailure::ConnectTimeout
                | UpstreamFailure::StreamRefused
        )
    }

    /// The answer the client gets when this failure is final.
    pub fn own_error(self) -> OwnError {
        match self {
            UpstreamFailure::ConnectRefused => OwnError::ConnectFailure,
            UpstreamFailure::ConnectTimeout => OwnError::ConnectTimeout,
            UpstreamFailure::Timeout => OwnError::Timeout,
            UpstreamFailure::StreamRefused | UpstreamFailure::Protocol => OwnError::Protocol,
        }
    }

    /// The `reason` label of `rampart_fallbacks_total` when this failure is retried.
    pub fn fallback_reason(self) -> FallbackReason {
        match self {
            UpstreamFailure::ConnectRefused
            | UpstreamFailure::ConnectTimeout
            | UpstreamFailure::StreamRefused => FallbackReason::ConnectFailure,
            UpstreamFailure::Protocol => FallbackReason::Reset,
            UpstreamFailure::Timeout => FallbackReason::Timeout,
        }
    }
}

/// A fault in what the client sent or did. Never counted against an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body's framing was invalid (a bad chunk size line, for example).
    BadFraming,
    /// The client stopped sending the body and closed, or went away before the answer.
    Gone,
    /// The client sent no body data for the upstream's `idle_timeout`.
    Stalled,
}

impl ClientFault {
    /// The answer the client gets (if it is still there to read it).
    pub fn own_error(self) -> OwnError {
        match self {
            ClientFault::BadFraming | ClientFault::Gone => OwnError::BadRequest,
            ClientFault::Stalled => OwnError::ClientTimeout,
        }
    }
}

/// Why an attempt produced no usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptError {
    /// The upstream failed.
    Upstream(UpstreamFailure),
    /// The client did.
    Client(ClientFault),
}

/// A response Rampart makes itself, with everything that differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnError {
    /// 502: the upstream refused the connection or its TLS handshake failed.
    ConnectFailure,
    /// 504: the connection attempt timed out.
    ConnectTimeout,
    /// 504: no response headers within `request_timeout`.
    Timeout,
    /// 502: the upstream reset, closed or sent an invalid response.
    Protocol,
    /// 503: no usable upstream, or stable's bulkhead is full (`retry-after: 1`).
    Bulkhead,
    /// 400: the client's request was malformed (its body's framing) or cut short.
    BadRequest,
    /// 408: the client stopped sending its body.
    ClientTimeout,
}

impl OwnError {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            OwnError::ConnectFailure | OwnError::Protocol => StatusCode::BAD_GATEWAY,
            OwnError::ConnectTimeout | OwnError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            OwnError::Bulkhead => StatusCode::SERVICE_UNAVAILABLE,
            OwnError::BadRequest => StatusCode::BAD_REQUEST,
            OwnError::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `x-rampart-error` value (docs/proxying.md#own-responses).
    pub fn name(self) -> &'static str {
        match self {
            OwnError::ConnectFailure | OwnError::ConnectTimeout => "connect_failure",
            OwnError::Timeout => "timeout",
            OwnError::Protocol => "protocol",
            OwnError::Bulkhead => "bulkhead",
            OwnError::BadRequest => "bad_request",
            OwnError::ClientTimeout => "client_timeout",
        }
    }

    /// The plain-text body.
    pub fn text(self) -> &'static str {
        match self {
            OwnError::ConnectFailure | OwnError::ConnectTimeout => {
                "rampart: could not connect to the upstream\n"
            }
            OwnError::Timeout => "rampart: the upstream did not answer in time\n",
            OwnError::Protocol => "rampart: the upstream's response was invalid or reset\n",
            OwnError::Bulkhead => {
                "rampart: the upstream is at its in-flight limit; retry shortly\n"
            }
            OwnError::BadRequest => "rampart: malformed or incomplete request\n",
            OwnError::ClientTimeout => "rampart: the request body stopped arriving\n",
        }
    }

    /// The `grpc-status` a gRPC client gets instead (trailers-only, HTTP 200), for the
    /// server-side errors: 4 (DEADLINE_EXCEEDED) for timeouts, 14 (UNAVAILABLE) otherwise.
    /// Client faults keep their HTTP status.
    pub fn grpc_code(self) -> Option<u32> {
        match self {
            OwnError::ConnectTimeout | OwnError::Timeout => Some(4),
            OwnError::ConnectFailure | OwnError::Protocol | OwnError::Bulkhead => Some(14),
            OwnError::BadRequest | OwnError::ClientTimeout => None,
        }
    }

    /// Whether the connection should be closed after this answer: after a body whose
    /// framing failed, the rest of the stream cannot be trusted.
    pub fn closes_connection(self) -> bool {
        matches!(self, OwnError::BadRequest | OwnError::ClientTimeout)
    }
}

/// Why a request was re-sent to the route's stable backend: `rampart_fallbacks_total`'s
/// `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The canary refused or timed out the connection, or refused the stream.
    ConnectFailure,
    /// The canary answered 5xx (`fallback: idempotent`).
    ServerError,
    /// The canary reset or sent an invalid response (`fallback: idempotent`).
    Reset,
    /// The canary did not answer within `request_timeout` (`fallback: idempotent`).
    Timeout,
}

impl FallbackReason {
    /// Every reason, in the order of the per-backend counter arrays.
    pub const ALL: [FallbackReason; 4] = [
        FallbackReason::ConnectFailure,
        FallbackReason::ServerError,
        FallbackReason::Reset,
        FallbackReason::Timeout,
    ];
    /// How many reasons there are: the size of the counter arrays.
    pub const COUNT: usize = FallbackReason::ALL.len();

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::ConnectFailure => "connect_failure",
            FallbackReason::ServerError => "server_error",
            FallbackReason::Reset => "reset",
            FallbackReason::Timeout => "timeout",
        }
    }

    /// Position in [`FallbackReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Classifies a failed upstream request: the client's fault when the request body the
/// client sent failed (seen through `client_fault`, which the request body sets), else the
/// upstream's, by the error's kind.
pub fn classify(
    error: &hyper_util::client::legacy::Error,
    client_fault: Option<ClientFault>,
) -> AttemptError {
    if let Some(fault) = client_fault {
        return AttemptError::Client(fault);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<ClientBodyError>() {
            return AttemptError::Client(body.fault());
        }
        source = e.source();
    }
    AttemptError::Upstream(classify_upstream(error))
}

fn classify_upstream(error: &hyper_util::client::legacy::Error) -> UpstreamFailure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    if !error.is_connect() {
        while let Some(e) = source {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                // REFUSED_STREAM, or a graceful GOAWAY whose last stream id is below ours:
                // either way the upstream processed nothing.
                let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
                let above_goaway =
                    h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
                if refused || above_goaway {
                    return UpstreamFailure::StreamRefused;
                }
            }
            source = e.source();
        }
        return UpstreamFailure::Protocol;
    }
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return UpstreamFailure::ConnectTimeout;
            }
        }
        source = e.source();
    }
    UpstreamFailure::ConnectRefused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_reasons_index_their_own_position() {
        for (i, reason) in FallbackReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        assert_eq!(FallbackReason::COUNT, 4);
    }

    #[test]
    fn upstream_failures_map_to_the_documented_answers() {
        let cases = [
            (UpstreamFailure::ConnectRefused, 502, "connect_failure"),
            (UpstreamFailure::ConnectTimeout, 504, "connect_failure"),
            (UpstreamFailure::StreamRefused, 502, "protocol"),
            (UpstreamFailure::Timeout, 504, "timeout"),
            (UpstreamFailure::Protocol, 502, "protocol"),
        ];
        for (failure, status, name) in cases {
            let own = failure.own_error();
            assert_eq!(
                (own.status().as_u16(), own.name()),
                (status, name),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn client_faults_are_answered_as_client_errors_and_close_the_connection() {
        for fault in [
            ClientFault::BadFraming,
            ClientFault::Gone,
            ClientFault::Stalled,
        ] {
            let own = fault.own_error();
            assert!(own.status().is_client_error(), "{fault:?}");
            assert!(own.closes_connection());
            assert_eq!(own.grpc_code(), None);
        }
    }

    #[test]
    fn grpc_clients_get_deadline_exceeded_for_timeouts_and_unavailable_otherwise() {
        assert_eq!(OwnError::Timeout.grpc_code(), Some(4));
        assert_eq!(OwnError::ConnectTimeout.grpc_code(), Some(4));
        assert_eq!(OwnError::ConnectFailure.grpc_code(), Some(14));
        assert_eq!(OwnError::Bulkhead.grpc_code(), Some(14));
        assert_eq!(OwnError::Protocol.grpc_code(), Some(14));
    }
}
