//! Why a consumer run stops. Each makes the run loop start over: elect,
//! set the consumer up again, and rewind to the ack floor.

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot create the persister consumer: {0}")]
    Consumer(String),
    #[error("the pull subscription failed: {0}")]
    Stream(String),
    /// What the consumer delivers stopped reaching us: its leader stopped
    /// answering our pull request (a node paused, killed or cut off: no new
    /// leader knows the request, and the client would only send another
    /// when it expires), or a delivery was lost on its way (it would come
    /// back only after the ack wait, behind newer ones). Pulling again from
    /// the ack floor brings everything back in order.
    #[error("deliveries of the consumer were lost on their way")]
    PullLost,
    #[error("another persister took over")]
    Deposed,
    #[error("fault injected")]
    Crashed,
}
