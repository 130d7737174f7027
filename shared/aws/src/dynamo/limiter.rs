//! [`DynamoLimiter`]: concurrency limits shared by every process (Lambda container) over the
//! one table, as capacity leased in chunks.
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | counter of a limit key | `LIMIT#<key>` | `LIMIT` | `inUse` (N): permits leased by all holders |
//! | lease of one holder | `LIMIT#<key>` | `HOLDER#<holder>` | `n` (N), `until` (ms); no TTL (see below) |
//! | ticket in the key's waiting line | `LIMIT#<key>` | `LINE#<score>#<task>` | `until` (ms), `expiresAt` (TTL) |
//!
//! The counter item of a deployment key also holds the deployment's adaptive concurrency limit
//! as the fleet last changed it (`adaptive`, `heldUntil`, `adaptedAt`; [`LimiterStore::share_adapted`]:
//! one conditional `UpdateItem` per change, a halving at most once per cool-down and an
//! increase once per whole step), read with the line at no extra cost.
//!
//! Each process keeps a local pool per key (`leased`, `used`). A permit taken from the pool costs
//! no I/O; when the pool is empty the process leases a chunk of `min(chunk, limit)` permits (or 1
//! when the chunk does not fit under the limit) with one `TransactWriteItems`: the counter's
//! `ADD inUse :c` conditioned on staying within the limit, and `ADD n :c` on its lease item. The
//! idle surplus goes back with the same kind of transaction when it reaches twice the chunk
//! (down to one chunk: hysteresis, so a batch ramping down does not give back chunk by chunk),
//! and all of it when the process's last permit of the key is released. The latter departs from
//! "give back at idle only after the lease's half-life", deliberately: a Lambda container is
//! frozen right after its invocation, and permits held by a frozen container are lost to every
//! other container until its lease expires (with a small limit, all of them).
//!
//! Write cost: a transaction is billed 2 WCU per item written, so a lease (or a give-back) is
//! 2 items × 2 WCU = 4 WCU. A process running a steady stream of tasks pays one lease per chunk
//! of 8 tasks, ≈ 0.5 WCU per task; a Lambda invocation (a burst that ends idle) pays one lease
//! per chunk it needs plus one give-back, e.g. a batch of 10 with chunk 8: 3 transactions,
//! 12 WCU, 1.2 WCU per task — against 2 × 1 WCU per task for a conditional update per acquire
//! and per release. Each limit key a task holds adds its own share. No item is hot: the counter
//! is written once per chunk per container, not once per task, and a lease item only by its
//! holder.
//!
//! A holder that dies keeps its permits leased until its lease expires; the sweeper then returns
//! them with [`DynamoLimiter::reclaim_expired`]. A live holder renews its lease item's `until`
//! (one `UpdateItem`) at an acquire or release once the lease is past half its length; the
//! default length (30 min) is at least twice Lambda's longest invocation, so a permit held by a
//! running task is never reclaimed.
//!
//! **Waiting line.** Permits go to whoever asks first; priority is kept by a line per key
//! ([`LimiterStore::waiting_front`], the policy in `taskexec_core::schedule::line_check`). A
//! task refused a permit puts its ticket (its aged score, zero-padded in the sort key so the
//! line sorts best first) — 1 WCU, again at each refusal, which renews its `until`; standing
//! also gives back this process's idle permits of the key, so that a better-ranked task
//! elsewhere can take them. A task about to take a permit reads the counter and the line's best
//! in one eventually consistent `Query` from the counter's sort key on (`LIMIT` < `LINE#`),
//! at most once per `line_view` per key (0.5 RCU), and yields when enough tickets outrank it.
//! One that takes a permit after a deferral deletes its ticket (1 WCU). A task that never waits
//! pays only the shared read. Expired tickets are skipped and deleted by the reader that meets
//! them.
//!
//! Lease items carry no TTL: a TTL deletion of a lease that still holds permits would not give
//! them back to the counter, and those permits would be lost for good. The sweeper's
//! [`DynamoLimiter::reclaim_expired`] deletes every expired lease (holding permits or not) in
//! the same transaction that returns its permits. Writes `REMOVE expiresAt` so that lease items
//! written by earlier versions (which had one) lose it at their next write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{Delete, ReturnConsumedCapacity, TransactWriteItem, Update};
use taskexec_core::fleet::Amounts;
use taskexec_core::ports::{Adapted, LimitKey, LimiterStore, Line, StoreResult, Ticket};
use taskexec_core::time::{Clock, Millis, SystemClock};

use super::item::{self, Item, n, s};
use super::keys;
use super::meter::{ConsumedWrites, WriteMeter};
use crate::error::AwsError;

/// Sort key of a limit key's counter item.
const COUNTER: &str = "LIMIT";
/// Sort-key prefix of a holder's lease item.
const HOLDER: &str = "HOLDER#";

/// How a [`DynamoLimiter`] leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterSettings {
    /// Permits leased at once (at most the limit).
    pub chunk: u32,
    /// How long a lease lasts unless renewed; renewed at an acquire or release past half of it.
    pub lease: Duration,
    /// How old this process's view of a waiting line may be before it is read again.
    pub line_view: Duration,
    /// How long a ticket stands in a line unless its task stands again (each refusal does).
    /// The front of a line asks again within a second and keeps its tickets; a task further
    /// back, backing off longer, loses its ticket between tries and stands again at the next
    /// (the front is always the best of the tasks still trying). Short, because a ticket whose
    /// task went away (cancelled, finished elsewhere, served by another deployment of its route)
    /// holds worse-ranked tasks back until it expires.
    pub line_ttl: Duration,
    /// The slot length of the fleet's provider-quota ledger ([`taskexec_core::fleet`], module
    /// `quota`); `None`: each process counts the quotas alone (N containers may send N times
    /// a quota).
    pub quota_slot: Option<Duration>,
}

impl Default for LimiterSettings {
    /// A chunk of 8, a 30-minute lease (twice Lambda's longest invocation), lines read at most
    /// once a second, tickets standing 10 s, and quotas shared in slots of 2 s.
    fn default() -> Self {
        Self {
            chunk: 8,
            lease: Duration::from_secs(30 * 60),
            line_view: Duration::from_secs(1),
            line_ttl: Duration::from_secs(10),
            quota_slot: Some(taskexec_core::fleet::DEFAULT_SLOT),
        }
    }
}

/// This process's view of one waiting line: when it was read, the permits leased by all holders
/// then, its tickets (best first) with when each expires.
#[derive(Debug, Default)]
struct LineView {
    read_at: Millis,
    leased: u32,
    tickets: Vec<(Ticket, Millis)>,
    adapted: Option<Adapted>,
}

/// One key's local pool.
#[derive(Debug, Default)]
struct Pool {
    /// Permits this process holds in DynamoDB.
    leased: u32,
    /// Of those, permits handed out.
    used: u32,
    /// When the lease item expires (ms), 0 before the first lease.
    until: Millis,
}

/// The concurrency limiter of the AWS shape: permits leased in chunks from DynamoDB (see the
/// module documentation for the layout, the write cost and how expired leases come back).
#[derive(Debug)]
pub struct DynamoLimiter {
    pub(super) client: Client,
    pub(super) table: String,
    holder: String,
    pub(super) settings: LimiterSettings,
    pools: Mutex<HashMap<LimitKey, Arc<tokio::sync::Mutex<Pool>>>>,
    lines: Mutex<HashMap<LimitKey, LineView>>,
    pub(super) meter: WriteMeter,
}

/// The string of a limit key in its partition key.
pub(super) fn key_string(key: &LimitKey) -> String {
    match key {
        LimitKey::Global => "GLOBAL".to_owned(),
        LimitKey::Deployment(d) => format!("D#{d}"),
        LimitKey::Model(d, m) => format!("M#{d}#{m}"),
    }
}

/// Partition key of a limit key's items.
fn limit_pk(key: &LimitKey) -> String {
    format!("LIMIT#{}", key_string(key))
}

/// Sort-key prefix of a ticket in a limit key's waiting line. It sorts right after the
/// counter's `LIMIT`, so one query from `LIMIT` on reads the counter and the line's best.
const LINE: &str = "LINE#";

/// Sort key of a ticket: its score zero-padded (so the line sorts best first), then its task.
fn ticket_sk(ticket: &Ticket) -> String {
    format!("{LINE}{:015}#{}", ticket.score.max(0), ticket.task_id)
}

/// The ticket a line item holds, with its expiry.
fn ticket_of(item: &Item) -> Option<(Ticket, Millis)> {
    let sk = item.get(keys::SK)?.as_s().ok()?.strip_prefix(LINE)?;
    let (score, task_id) = sk.split_once('#')?;
    let ticket = Ticket { score: score.parse().ok()?, task_id: task_id.to_owned() };
    Some((ticket, number(item, "until")?))
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// A cancelled transaction whose reasons are only failed conditions or conflicts: `true`.
fn refused(e: &SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>) -> bool {
    match e.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(c)) => c
            .cancellation_reasons()
            .iter()
            .filter_map(|r| r.code())
            .filter(|code| *code != "None")
            .all(|code| code == "ConditionalCheckFailed" || code == "TransactionConflict"),
        _ => false,
    }
}

impl DynamoLimiter {
    /// A limiter over `table` for the process `holder` (unique per process: the worker's owner
    /// id).
    #[must_use]
    pub fn new(client: Client, table: impl Into<String>, holder: impl Into<String>, settings: LimiterSettings) -> Self {
        let settings = LimiterSettings { chunk: settings.chunk.max(1), ..settings };
        Self {
            client,
            table: table.into(),
            holder: holder.into(),
            settings,
            pools: Mutex::default(),
            lines: Mutex::default(),
            meter: WriteMeter::default(),
        }
    }

    /// This process's holder id.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn pool(&self, key: &LimitKey) -> Arc<tokio::sync::Mutex<Pool>> {
        self.pools.lock().expect("limiter pools poisoned").entry(key.clone()).or_default().clone()
    }

    fn holder_sk(&self) -> String {
        format!("{HOLDER}{}", self.holder)
    }

    fn lease_ms(&self) -> Millis {
        millis(self.settings.lease)
    }

    /// Move `delta` permits between the counter and this holder's lease item in one transaction
    /// (positive: lease, conditioned on the counter staying at or under `limit`; negative: give
    /// back, conditioned on neither going below zero). `false` when a condition failed.
    async fn transfer(&self, key: &LimitKey, delta: i64, limit: u32, until: Millis) -> Result<bool, AwsError> {
        let pk = limit_pk(key);
        let build = |e| AwsError::build("TransactWriteItems", e);
        let counter = if delta > 0 {
            Update::builder()
                .condition_expression("attribute_not_exists(inUse) OR inUse <= :max")
                .expression_attribute_values(":max", n(i64::from(limit) - delta))
        } else {
            Update::builder().condition_expression("inUse >= :k").expression_attribute_values(":k", n(-delta))
        };
        let counter = counter
            .table_name(&self.table)
            .set_key(Some(item::key(pk.clone(), COUNTER)))
            .update_expression("ADD inUse :d")
            .expression_attribute_values(":d", n(delta))
            .build()
            .map_err(build)?;
        let lease = Update::builder()
            .table_name(&self.table)
            .set_key(Some(item::key(pk, self.holder_sk())))
            .update_expression("ADD n :d SET #until = :until REMOVE expiresAt")
            .expression_attribute_names("#until", "until")
            .expression_attribute_values(":d", n(delta))
            .expression_attribute_values(":until", n(until));
        let lease = if delta > 0 {
            lease
        } else {
            lease.condition_expression("n >= :k").expression_attribute_values(":k", n(-delta))
        };
        let lease = lease.build().map_err(build)?;
        let out = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(counter).build())
            .transact_items(TransactWriteItem::builder().update(lease).build())
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await;
        self.settle(out)
    }

    /// Meter a transaction's outcome: `true` when written, `false` when refused.
    fn settle(
        &self,
        out: Result<
            aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsOutput,
            SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>,
        >,
    ) -> Result<bool, AwsError> {
        match out {
            Ok(out) => {
                for consumed in out.consumed_capacity() {
                    self.meter.record(Some(consumed));
                }
                Ok(true)
            }
            Err(e) if refused(&e) => {
                self.meter.rejected();
                Ok(false)
            }
            Err(e) => Err(AwsError::dynamo("TransactWriteItems", e)),
        }
    }

    /// Meter an `UpdateItem`'s outcome: `true` when written, `false` when its condition failed.
    pub(super) fn settle_update(
        &self,
        out: Result<
            aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
            aws_sdk_dynamodb::error::SdkError<UpdateItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
        >,
    ) -> Result<bool, AwsError> {
        match out {
            Ok(out) => {
                self.meter.record(out.consumed_capacity());
                Ok(true)
            }
            Err(e) if e.as_service_error().is_some_and(UpdateItemError::is_conditional_check_failed_exception) => {
                self.meter.rejected();
                Ok(false)
            }
            Err(e) => Err(AwsError::dynamo("UpdateItem", e)),
        }
    }

    /// Push the lease item's `until` to `until` (it must still exist); `false` when it is gone
    /// (reclaimed).
    async fn renew(&self, key: &LimitKey, until: Millis) -> Result<bool, AwsError> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item::key(limit_pk(key), self.holder_sk())))
            .condition_expression("attribute_exists(n)")
            .update_expression("SET #until = :until REMOVE expiresAt")
            .expression_attribute_names("#until", "until")
            .expression_attribute_values(":until", n(until))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await;
        self.settle_update(out)
    }

    /// Renew the pool's lease when past half its length. A lease found gone (reclaimed while
    /// this process was alive, e.g. frozen) is taken again for the permits in use, whatever the
    /// limit: they are running.
    async fn keep_alive(&self, key: &LimitKey, pool: &mut Pool, now: Millis) -> Result<(), AwsError> {
        if pool.leased == 0 || now < pool.until - self.lease_ms() / 2 {
            return Ok(());
        }
        let until = now + self.lease_ms();
        if self.renew(key, until).await? {
            pool.until = until;
            return Ok(());
        }
        tracing::warn!(key = %key_string(key), holder = %self.holder, "limiter lease was reclaimed; taking it again");
        pool.leased = 0;
        if pool.used > 0 && self.transfer(key, i64::from(pool.used), u32::MAX / 2, until).await? {
            pool.leased = pool.used;
        }
        pool.until = until;
        Ok(())
    }

    async fn acquire_at(&self, key: &LimitKey, limit: u32, now: Millis) -> Result<bool, AwsError> {
        let pool = self.pool(key);
        let mut pool = pool.lock().await;
        if pool.used < pool.leased {
            pool.used += 1;
            self.keep_alive(key, &mut pool, now).await?;
            return Ok(true);
        }
        if limit == 0 {
            return Ok(false);
        }
        let until = now + self.lease_ms();
        let chunk = self.settings.chunk.min(limit);
        for c in if chunk > 1 { vec![chunk, 1] } else { vec![1] } {
            if self.transfer(key, i64::from(c), limit, until).await? {
                pool.leased += c;
                pool.used += 1;
                pool.until = until;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn release_at(&self, key: &LimitKey, now: Millis) -> Result<(), AwsError> {
        let pool = self.pool(key);
        let mut pool = pool.lock().await;
        if pool.used == 0 {
            return Ok(());
        }
        pool.used -= 1;
        let surplus = pool.leased - pool.used;
        let give_back = if pool.used == 0 {
            surplus
        } else if surplus >= 2 * self.settings.chunk {
            surplus - self.settings.chunk
        } else {
            0
        };
        if give_back == 0 {
            return self.keep_alive(key, &mut pool, now).await;
        }
        let until = now + self.lease_ms();
        if self.transfer(key, -i64::from(give_back), 0, until).await? {
            pool.leased -= give_back;
            pool.until = until;
        } else {
            // The lease item lost its permits (reclaimed): nothing of ours is counted any more.
            tracing::warn!(key = %key_string(key), holder = %self.holder, "limiter lease was reclaimed before a give-back");
            pool.leased = pool.used;
            if pool.used > 0 && !self.transfer(key, i64::from(pool.used), u32::MAX / 2, until).await? {
                pool.leased = 0;
            }
            pool.until = until;
        }
        Ok(())
    }

    /// Return the permits of every lease under `keys` that expired before `now` (their holders
    /// died): per lease one transaction deleting the lease item, conditioned on its `until` and
    /// `n` being unchanged, and subtracting its `n` from the counter. Returns the permits
    /// returned. The sweeper calls it every run.
    pub async fn reclaim_expired(&self, keys: &[LimitKey], now: Millis) -> StoreResult<u64> {
        let mut returned = 0;
        for key in keys {
            returned += self.reclaim_key(key, now).await?;
        }
        if returned > 0 {
            tracing::info!(returned, "reclaimed expired limiter leases");
        }
        Ok(returned)
    }

    async fn reclaim_key(&self, key: &LimitKey, now: Millis) -> Result<u64, AwsError> {
        let pk = limit_pk(key);
        let mut returned = 0;
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :holder)")
                .expression_attribute_names("#pk", keys::PK)
                .expression_attribute_names("#sk", keys::SK)
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":holder", s(HOLDER))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| AwsError::dynamo("Query", e))?;
            for item in out.items.unwrap_or_default() {
                let (Some(until), Some(held)) = (number(&item, "until"), number(&item, "n")) else { continue };
                if until >= now {
                    continue;
                }
                let Some(sk) = item.get(keys::SK).and_then(|v| v.as_s().ok()).cloned() else { continue };
                if self.reclaim_one(&pk, &sk, until, held).await? {
                    returned += u64::try_from(held).unwrap_or(0);
                }
            }
            start = out.last_evaluated_key.filter(|k| !k.is_empty());
            if start.is_none() {
                return Ok(returned);
            }
        }
    }

    async fn reclaim_one(&self, pk: &str, sk: &str, until: i64, held: i64) -> Result<bool, AwsError> {
        let build = |e| AwsError::build("TransactWriteItems", e);
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(item::key(pk, sk)))
            .condition_expression("#until = :until AND n = :n")
            .expression_attribute_names("#until", "until")
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":n", n(held))
            .build()
            .map_err(build)?;
        let mut request =
            self.client.transact_write_items().transact_items(TransactWriteItem::builder().delete(delete).build());
        if held > 0 {
            let counter = Update::builder()
                .table_name(&self.table)
                .set_key(Some(item::key(pk, COUNTER)))
                .condition_expression("inUse >= :n")
                .update_expression("ADD inUse :d")
                .expression_attribute_values(":n", n(held))
                .expression_attribute_values(":d", n(-held))
                .build()
                .map_err(build)?;
            request = request.transact_items(TransactWriteItem::builder().update(counter).build());
        }
        self.settle(request.return_consumed_capacity(ReturnConsumedCapacity::Indexes).send().await)
    }

    /// Give back the permits of `key` this process holds but does not use.
    async fn give_back_idle(&self, key: &LimitKey, now: Millis) -> Result<(), AwsError> {
        let pool = self.pool(key);
        let mut pool = pool.lock().await;
        let idle = pool.leased - pool.used;
        if idle == 0 {
            return Ok(());
        }
        let until = now + self.lease_ms();
        if self.transfer(key, -i64::from(idle), 0, until).await? {
            pool.leased -= idle;
            pool.until = until;
        }
        Ok(())
    }

    /// Read `key`'s counter and the best of its line in one query (eventually consistent,
    /// from the counter's sort key on); expired tickets met on the way are deleted (each
    /// conditioned on its expiry, so a ticket renewed meanwhile stays).
    async fn read_line(&self, key: &LimitKey, front: usize, now: Millis) -> Result<LineView, AwsError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk AND #sk >= :from")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_values(":pk", s(limit_pk(key)))
            .expression_attribute_values(":from", s(COUNTER))
            .limit(i32::try_from(front + 9).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| AwsError::dynamo("Query", e))?;
        let counter =
            out.items().iter().find(|i| i.get(keys::SK).and_then(|v| v.as_s().ok()).is_some_and(|sk| sk == COUNTER));
        let leased = counter.and_then(|i| number(i, "inUse")).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let adapted = counter.and_then(|i| {
            let limit = u32::try_from(number(i, "adaptive")?).ok()?;
            Some(Adapted { limit, held_until: number(i, "heldUntil")?, at: number(i, "adaptedAt")? })
        });
        let mut tickets = Vec::new();
        for (ticket, until) in out.items().iter().filter_map(ticket_of) {
            if until >= now {
                tickets.push((ticket, until));
                continue;
            }
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(item::key(limit_pk(key), ticket_sk(&ticket))))
                .condition_expression("#until = :until")
                .expression_attribute_names("#until", "until")
                .expression_attribute_values(":until", n(until))
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .await;
            match deleted {
                Ok(out) => self.meter.record(out.consumed_capacity()),
                Err(e) => tracing::debug!(error = %AwsError::dynamo("DeleteItem", e), "expired ticket not deleted"),
            }
        }
        Ok(LineView { read_at: now, leased, tickets, adapted })
    }

    fn lock_lines(&self) -> std::sync::MutexGuard<'_, HashMap<LimitKey, LineView>> {
        self.lines.lock().expect("limiter lines poisoned")
    }

    /// The permits of `key` leased by all holders together (the counter item; 0 when absent).
    pub async fn leased_total(&self, key: &LimitKey) -> StoreResult<i64> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item::key(limit_pk(key), COUNTER)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("GetItem", e))?;
        Ok(out.item.and_then(|item| number(&item, "inUse")).unwrap_or(0))
    }

    /// Write capacity consumed by this limiter so far, as DynamoDB reported it (zero on moto).
    #[must_use]
    pub fn consumed_writes(&self) -> ConsumedWrites {
        self.meter.totals()
    }

    /// Permits of `key` this process holds in DynamoDB (used or not).
    pub async fn leased(&self, key: &LimitKey) -> u32 {
        self.pool(key).lock().await.leased
    }
}

impl LimiterStore for DynamoLimiter {
    async fn try_acquire(&self, key: &LimitKey, limit: u32) -> StoreResult<bool> {
        Ok(self.acquire_at(key, limit, SystemClock.now()).await?)
    }

    async fn release(&self, key: &LimitKey) -> StoreResult<()> {
        Ok(self.release_at(key, SystemClock.now()).await?)
    }

    /// This process's permits in use (no I/O).
    async fn in_use(&self, key: &LimitKey) -> StoreResult<u32> {
        Ok(self.pool(key).lock().await.used)
    }

    /// The line as this process last read it (the counter and the line's best, one query),
    /// read again when older than `line_view`.
    async fn waiting_front(&self, key: &LimitKey, n: usize, now: Millis) -> StoreResult<Option<Line>> {
        let idle = {
            let pool = self.pool(key);
            let pool = pool.lock().await;
            pool.leased - pool.used
        };
        let line = |view: &LineView| Line {
            leased: view.leased,
            idle,
            front: view.tickets.iter().filter(|(_, until)| *until >= now).take(n).map(|(t, _)| t.clone()).collect(),
            adapted: view.adapted,
        };
        let fresh = |view: &LineView| now < view.read_at + millis(self.settings.line_view);
        if let Some(view) = self.lock_lines().get(key).filter(|v| fresh(v)) {
            return Ok(Some(line(view)));
        }
        let view = self.read_line(key, n, now).await?;
        let answer = line(&view);
        self.lock_lines().insert(key.clone(), view);
        Ok(Some(answer))
    }

    /// One `PutItem` (1 WCU): the ticket with its expiry (`until`, and `expiresAt` an hour
    /// later for DynamoDB's TTL to delete it if no reader did). Then the idle permits of `key`
    /// this process holds go back (a transaction, only when there are some).
    async fn stand_in_line(&self, key: &LimitKey, ticket: &Ticket, now: Millis) -> StoreResult<()> {
        let until = now + millis(self.settings.line_ttl);
        let out = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item::key(limit_pk(key), ticket_sk(ticket))))
            .item("until", n(until))
            .item(keys::EXPIRES_AT, n(until / 1000 + 3_600))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("PutItem", e))?;
        self.meter.record(out.consumed_capacity());
        {
            let mut lines = self.lock_lines();
            let view = lines.entry(key.clone()).or_default();
            view.tickets.retain(|(t, _)| t.task_id != ticket.task_id);
            let at = view.tickets.partition_point(|(t, _)| t < ticket);
            view.tickets.insert(at, (ticket.clone(), until));
        }
        Ok(self.give_back_idle(key, now).await?)
    }

    /// One `UpdateItem` of the key's counter (1 WCU), conditioned on no newer change stored;
    /// every worker reads it with the line.
    async fn share_adapted(&self, key: &LimitKey, adapted: Adapted) -> StoreResult<()> {
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item::key(limit_pk(key), COUNTER)))
            .condition_expression("attribute_not_exists(adaptedAt) OR adaptedAt < :at")
            .update_expression("SET adaptive = :limit, heldUntil = :held, adaptedAt = :at")
            .expression_attribute_values(":limit", n(i64::from(adapted.limit)))
            .expression_attribute_values(":held", n(adapted.held_until))
            .expression_attribute_values(":at", n(adapted.at))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await;
        // A newer change already stored: nothing to do (its `false`).
        self.settle_update(out)?;
        if let Some(view) = self.lock_lines().get_mut(key).filter(|v| v.adapted.is_none_or(|a| a.at < adapted.at)) {
            view.adapted = Some(adapted);
        }
        Ok(())
    }

    /// One `DeleteItem` (1 WCU).
    async fn leave_line(&self, key: &LimitKey, ticket: &Ticket) -> StoreResult<()> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(item::key(limit_pk(key), ticket_sk(ticket))))
            .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
            .send()
            .await
            .map_err(|e| AwsError::dynamo("DeleteItem", e))?;
        self.meter.record(out.consumed_capacity());
        if let Some(view) = self.lock_lines().get_mut(key) {
            view.tickets.retain(|(t, _)| t.task_id != ticket.task_id);
        }
        Ok(())
    }

    fn quota_slot(&self) -> Option<Duration> {
        self.settings.quota_slot
    }

    async fn lease_quota(&self, key: &LimitKey, slot: u64, amounts: Amounts, caps: Amounts) -> StoreResult<bool> {
        Ok(self.lease_slot(key, slot, amounts, caps).await?)
    }

    async fn give_back_quota(&self, key: &LimitKey, slot: u64, amounts: Amounts) -> StoreResult<()> {
        Ok(self.give_back_slot(key, slot, amounts).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_keys_have_distinct_partitions() {
        assert_eq!(limit_pk(&LimitKey::Global), "LIMIT#GLOBAL");
        assert_eq!(limit_pk(&LimitKey::Deployment("a".into())), "LIMIT#D#a");
        assert_eq!(limit_pk(&LimitKey::Model("a".into(), "m".into())), "LIMIT#M#a#m");
        assert_eq!(LimiterSettings::default().chunk, 8);
    }
}
