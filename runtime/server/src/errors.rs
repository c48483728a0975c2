//! Mapping every failure to a status, a code and a JSON body.

use wasmscore_replica::ScoreError;
use wasmscore_router::RouteError;

/// An error as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` on overload.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"error": {"code": self.code, "message": self.message}})).expect("json")
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NotReady { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(503, "unavailable", e.to_string())
            },
            RouteError::Unauthorized(_) => ApiError::new(401, "unauthorized", e.to_string()),
            _ => ApiError::new(404, "not_found", e.to_string()),
        }
    }
}

impl From<wasmscore_remote::logging::Refused> for ApiError {
    fn from(e: wasmscore_remote::logging::Refused) -> Self {
        let code = if e.status == 400 { "bad_request" } else { "internal" };
        ApiError::new(e.status, code, e.message)
    }
}

/// A server with no log settings to change (one made by a test).
pub(crate) fn no_log_settings() -> ApiError {
    ApiError::new(501, "not_implemented", "this server has no log settings to change")
}

impl From<ScoreError> for ApiError {
    fn from(e: ScoreError) -> Self {
        let (status, code) = e.status();
        ApiError {
            // Overloaded or unavailable: worth a retry soon.
            retry_after: (status == 503).then_some(1),
            ..ApiError::new(status, code, e.to_string())
        }
    }
}
