//! [`EventSourceMappings`]: the worker's three SQS event source mappings (high, normal, low), whose
//! `ScalingConfig.MaximumConcurrency` values the sweeper rebalances
//! (`taskexec_lambda::sweeper::mappings`), and which a global pause disables and a resume enables
//! again ([`EventSourceMappings::set_enabled`]), so a paused deployment makes no receive at all.
//! Needs `lambda:GetEventSourceMapping` and `lambda:UpdateEventSourceMapping` on the three mappings.

use aws_sdk_lambda::Client;
use aws_sdk_lambda::operation::get_event_source_mapping::GetEventSourceMappingOutput;
use aws_sdk_lambda::operation::update_event_source_mapping::builders::UpdateEventSourceMappingFluentBuilder;
use aws_sdk_lambda::types::ScalingConfig;
use taskexec_lambda::actions::ActionError;
use taskexec_lambda::sweeper::mappings::MappingWeights;

use crate::error::AwsError;

/// The three event source mappings, by UUID.
///
/// ```no_run
/// use taskexec_aws::EventSourceMappings;
/// # async fn demo(client: aws_sdk_lambda::Client) -> Result<(), taskexec_aws::AwsError> {
/// let mappings = EventSourceMappings::new(client, ["uuid-high".into(), "uuid-normal".into(), "uuid-low".into()]);
/// let [high, normal, low] = mappings.maximum_concurrency().await?;
/// mappings.set_maximum_concurrency(2, 4).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EventSourceMappings {
    client: Client,
    uuids: [String; 3],
}

impl EventSourceMappings {
    /// The mappings of the high, normal and low queues.
    #[must_use]
    pub fn new(client: Client, uuids: [String; 3]) -> Self {
        Self { client, uuids }
    }

    /// Each mapping's `MaximumConcurrency` (`None` when it has no scaling config): one
    /// `GetEventSourceMapping` per mapping.
    pub async fn maximum_concurrency(&self) -> Result<[Option<u32>; 3], AwsError> {
        let mut out = [None; 3];
        for (i, uuid) in self.uuids.iter().enumerate() {
            let mapping = self.get(uuid).await?;
            out[i] = mapping
                .scaling_config()
                .and_then(ScalingConfig::maximum_concurrency)
                .and_then(|c| u32::try_from(c).ok());
        }
        Ok(out)
    }

    /// Set mapping `index`'s (0 high, 1 normal, 2 low) `MaximumConcurrency` (2..=1000).
    pub async fn set_maximum_concurrency(&self, index: usize, value: u32) -> Result<(), AwsError> {
        let uuid = &self.uuids[index.min(2)];
        let scaling = ScalingConfig::builder().maximum_concurrency(i32::try_from(value).unwrap_or(i32::MAX)).build();
        self.update(uuid, |request| request.scaling_config(scaling)).await
    }

    /// Enable or disable the three mappings; only those in the other state are written (one
    /// `GetEventSourceMapping` each, one `UpdateEventSourceMapping` per change). Returns how many
    /// changed; each change is an audit line (`taskexec::audit`, kind `mappingEnabled` /
    /// `mappingDisabled`). Lambda applies it asynchronously (the state passes through
    /// `Enabling`/`Disabling`): a batch already being received still arrives, and correctness rests
    /// on the claim's pause check, not on this.
    pub async fn set_enabled(&self, enabled: bool) -> Result<usize, AwsError> {
        let mut changed = 0;
        for uuid in &self.uuids {
            let mapping = self.get(uuid).await?;
            let state = mapping.state().unwrap_or("Enabled");
            let is_enabled = matches!(state, "Enabled" | "Enabling" | "Creating" | "Updating");
            if is_enabled == enabled {
                continue;
            }
            self.update(uuid, |request| request.enabled(enabled)).await?;
            let kind = if enabled { "mappingEnabled" } else { "mappingDisabled" };
            tracing::info!(target: "taskexec::audit", kind, mapping = %uuid, was = state, "event source mapping switched");
            changed += 1;
        }
        Ok(changed)
    }

    async fn get(&self, uuid: &str) -> Result<GetEventSourceMappingOutput, AwsError> {
        let request = self.client.get_event_source_mapping().uuid(uuid);
        request.send().await.map_err(|e| AwsError::lambda("GetEventSourceMapping", e))
    }

    /// One `UpdateEventSourceMapping` of `uuid`, with what `change` sets.
    async fn update(
        &self,
        uuid: &str,
        change: impl FnOnce(UpdateEventSourceMappingFluentBuilder) -> UpdateEventSourceMappingFluentBuilder,
    ) -> Result<(), AwsError> {
        let request = change(self.client.update_event_source_mapping().uuid(uuid));
        request.send().await.map_err(|e| AwsError::lambda("UpdateEventSourceMapping", e))?;
        Ok(())
    }
}

impl MappingWeights for EventSourceMappings {
    async fn weights(&self) -> Result<[Option<u32>; 3], ActionError> {
        Ok(self.maximum_concurrency().await?)
    }

    async fn set_weight(&self, index: usize, value: u32) -> Result<(), ActionError> {
        Ok(self.set_maximum_concurrency(index, value).await?)
    }
}
