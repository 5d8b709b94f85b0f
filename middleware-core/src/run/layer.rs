//! `PaybondAgentRun` as a tower `Layer`.

use tower::Layer;

use super::{PaybondAgentRun, PaybondAgentRunService};

impl<S> Layer<S> for PaybondAgentRun {
    type Service = PaybondAgentRunService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaybondAgentRunService::new(inner, self.clone())
    }
}
