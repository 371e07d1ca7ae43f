//! Why a consumer run stops. Each makes the run loop start over: elect,
//! set the consumer up again, and rewind to the ack floor.

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot create the persister consumer: {0}")]
    Consumer(String),
    #[error("the pull subscription failed: {0}")]
    Stream(String),
    #[error("another persister took over")]
    Deposed,
    #[error("fault injected")]
    Crashed,
}
