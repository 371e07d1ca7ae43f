//! Who is online, cluster-wide: a JetStream KV bucket with a key per
//! connection (`<user>.<gateway>.<session>`), refreshed by a heartbeat and
//! expiring after the TTL, so a crashed gateway's users go offline by
//! themselves (the bucket places delete markers on expiry). Every gateway
//! follows the bucket into a local view, which answers `online`, and tells
//! its connected users when one of their contacts comes or goes.

use crate::delivery::Hub;
use crate::error::ApiError;
use crate::ws::protocol;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use futures::StreamExt;
use natter_core::{DeviceId, UserId, subjects};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One live connection, as stored under its key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub gateway: Uuid,
    pub connected_at: DateTime<Utc>,
}

#[derive(Default)]
struct UserView {
    connections: HashMap<String, Connection>,
    last_seen: Option<DateTime<Utc>>,
}

/// The cluster's connections as this gateway last heard them: the part of
/// [`Presence`] that needs no NATS.
#[derive(Default)]
pub struct PresenceView {
    users: RwLock<HashMap<UserId, UserView>>,
}

pub struct Presence {
    store: kv::Store,
    ttl: Duration,
    view: PresenceView,
    /// This gateway's own keys, re-put by the heartbeat.
    own: Mutex<HashMap<String, Own>>,
}

/// One of this gateway's connections: what it counts as, what is stored.
struct Own {
    connection: Connection,
    value: Bytes,
}

/// A user already has as many live connections as allowed.
#[derive(Debug, thiserror::Error)]
#[error("{user} already has {live} live connections")]
pub struct TooManyConnections {
    pub user: UserId,
    pub live: usize,
}

/// A user's presence, for lists and the admin view.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveUser {
    pub user_id: UserId,
    pub connections: usize,
    pub gateways: Vec<Uuid>,
}

impl Presence {
    pub async fn open(
        js: &jetstream::Context,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Self, ApiError> {
        let store = js
            .create_or_update_key_value(kv::Config {
                bucket: subjects::PRESENCE_BUCKET.to_owned(),
                history: 1,
                max_age: ttl,
                // Expiry leaves a delete marker, which is how watchers learn
                // of a connection whose gateway died.
                limit_markers: Some(ttl),
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(ApiError::internal)?;
        Ok(Self {
            store,
            ttl,
            view: PresenceView::default(),
            own: Mutex::new(HashMap::new()),
        })
    }

    pub fn key(user: UserId, gateway: Uuid, session: u64) -> String {
        format!("{}.{}.{session}", user.0.simple(), gateway.simple())
    }

    /// Records a connection of this gateway, unless `user` already has
    /// `max` live connections of other devices anywhere in the cluster (the
    /// device's own older connection is about to be replaced, so it does
    /// not count). The key is returned for [`Presence::disconnected`].
    ///
    /// This gateway's connections count the moment they are made; other
    /// gateways' once their keys reach this one's view, a few milliseconds
    /// later, so a burst spread over gateways can briefly exceed `max`.
    pub async fn connected(
        &self,
        user: UserId,
        device: DeviceId,
        gateway: Uuid,
        session: u64,
        max: usize,
    ) -> Result<String, TooManyConnections> {
        let key = Self::key(user, gateway, session);
        let connection = Connection {
            user_id: user,
            device_id: device,
            gateway,
            connected_at: Utc::now().trunc_subsecs(3),
        };
        let value = Bytes::from(serde_json::to_vec(&connection).unwrap_or_default());
        {
            let mut own = self
                .own
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Counted and recorded under one lock, so two connections racing
            // on this gateway cannot both take the last place.
            let mut live = self.view.keys_of_other_devices(user, &connection.device_id);
            live.extend(
                own.iter()
                    .filter(|(_, o)| {
                        o.connection.user_id == user
                            && o.connection.device_id != connection.device_id
                    })
                    .map(|(k, _)| k.clone()),
            );
            if live.len() >= max {
                return Err(TooManyConnections {
                    user,
                    live: live.len(),
                });
            }
            own.insert(
                key.clone(),
                Own {
                    connection,
                    value: value.clone(),
                },
            );
        }
        if let Err(e) = self.store.put(&key, value).await {
            tracing::warn!(error = %e, %user, "presence not recorded; the heartbeat retries");
        }
        Ok(key)
    }

    pub async fn disconnected(&self, key: &str) {
        if let Ok(mut own) = self.own.lock() {
            own.remove(key);
        }
        if let Err(e) = self.store.delete(key).await {
            tracing::warn!(error = %e, "presence not cleared; it expires with the TTL");
        }
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.view.is_online(user)
    }

    /// Everyone connected anywhere, with their connection counts.
    pub fn active_users(&self) -> Vec<ActiveUser> {
        self.view.active_users()
    }
}

impl PresenceView {
    /// The keys of `user`'s connections on devices other than `device`.
    fn keys_of_other_devices(&self, user: UserId, device: &DeviceId) -> HashSet<String> {
        self.users
            .read()
            .map(|v| {
                v.get(&user)
                    .map(|u| {
                        u.connections
                            .iter()
                            .filter(|(_, c)| c.device_id != *device)
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    pub fn is_online(&self, user: UserId) -> bool {
        self.users
            .read()
            .map(|v| v.get(&user).is_some_and(|u| !u.connections.is_empty()))
            .unwrap_or(false)
    }

    /// Everyone connected anywhere, with their connection counts.
    pub fn active_users(&self) -> Vec<ActiveUser> {
        let Ok(view) = self.users.read() else {
            return Vec::new();
        };
        let mut users: Vec<ActiveUser> = view
            .iter()
            .filter(|(_, u)| !u.connections.is_empty())
            .map(|(id, u)| {
                let gateways: HashSet<Uuid> = u.connections.values().map(|c| c.gateway).collect();
                let mut gateways: Vec<Uuid> = gateways.into_iter().collect();
                gateways.sort();
                ActiveUser {
                    user_id: *id,
                    connections: u.connections.len(),
                    gateways,
                }
            })
            .collect();
        users.sort_by_key(|u| u.user_id);
        users
    }

    /// Applies one bucket entry: `put` is the stored connection, `None` a
    /// delete or expiry. `Some((user, online, at))` when the user's online
    /// state flipped.
    pub fn apply(&self, key: &str, put: Option<&[u8]>) -> Option<(UserId, bool, DateTime<Utc>)> {
        let user: UserId = key
            .split('.')
            .next()
            .and_then(|raw| Uuid::parse_str(raw).ok())
            .map(UserId)?;
        let connection: Option<Connection> = match put {
            Some(value) => Some(serde_json::from_slice(value).ok()?),
            None => None,
        };
        let mut view = self.users.write().ok()?;
        let state = view.entry(user).or_default();
        let was_online = !state.connections.is_empty();
        let now = Utc::now().trunc_subsecs(3);
        match connection {
            Some(connection) => {
                state.connections.insert(key.to_owned(), connection);
            }
            None => {
                state.connections.remove(key);
            }
        }
        state.last_seen = Some(now);
        let online = !state.connections.is_empty();
        (online != was_online).then_some((user, online, now))
    }
}

/// Follows the bucket, tells this gateway's users of their contacts'
/// changes, and beats the heart of this gateway's keys, until `shutdown`;
/// then removes this gateway's keys.
pub async fn run(
    presence: Arc<Presence>,
    hub: Arc<Hub>,
    pool: PgPool,
    shutdown: CancellationToken,
) {
    let watch = match presence.store.watch_all().await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot follow presence");
            return;
        }
    };
    // Side by side in one task: a heartbeat of thousands of keys never
    // holds up the changes, nor they it.
    tokio::join!(
        heartbeat(&presence, &shutdown),
        follow(&presence, watch, &hub, &pool, &shutdown),
    );
    let keys: Vec<String> = presence
        .own
        .lock()
        .map(|own| own.keys().cloned().collect())
        .unwrap_or_default();
    for key in keys {
        presence.disconnected(&key).await;
    }
}

/// Presence changes told to contacts per query: what arrived while the
/// previous query ran goes in the next one, so a reconnection storm of
/// thousands costs tens of queries, not one each.
const CHANGES_PER_QUERY: usize = 512;
/// Heartbeat writes in flight at once.
const BEATS_AT_ONCE: usize = 64;

/// Re-puts this gateway's keys every third of the TTL until shutdown.
async fn heartbeat(presence: &Presence, shutdown: &CancellationToken) {
    let mut heartbeat = tokio::time::interval((presence.ttl / 3).max(Duration::from_millis(200)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = heartbeat.tick() => presence.beat().await,
        }
    }
}

/// Follows the bucket into the local view, and tells this gateway's users
/// when a contact comes or goes, changes that arrived together at once.
async fn follow(
    presence: &Presence,
    mut watch: kv::Watch,
    hub: &Hub,
    pool: &PgPool,
    shutdown: &CancellationToken,
) {
    let mut changes = Vec::new();
    loop {
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return,
            entry = watch.next() => entry,
        };
        let mut open = presence.note(entry, &mut changes);
        while open && changes.len() < CHANGES_PER_QUERY {
            match futures::FutureExt::now_or_never(watch.next()) {
                Some(entry) => open = presence.note(entry, &mut changes),
                None => break,
            }
        }
        if !changes.is_empty() {
            tell_contacts(hub, pool, &changes).await;
            changes.clear();
        }
        if !open {
            return;
        }
    }
}

/// A user who came or went, and when.
type Change = (UserId, bool, DateTime<Utc>);

impl Presence {
    /// Applies one entry of the watch; a change of a user's presence seen
    /// once the watch is current is added to `changes`. `false` once the
    /// watch ended.
    fn note(
        &self,
        entry: Option<Result<kv::Entry, kv::WatcherError>>,
        changes: &mut Vec<Change>,
    ) -> bool {
        match entry {
            Some(Ok(entry)) => {
                let put = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
                if let Some((user, online, at)) = self.view.apply(&entry.key, put)
                    && entry.seen_current
                {
                    tracing::info!(%user, online, "presence changed");
                    changes.push((user, online, at));
                }
                true
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "presence watch error");
                true
            }
            None => false,
        }
    }

    async fn beat(&self) {
        let own: Vec<(String, Bytes)> = self
            .own
            .lock()
            .map(|own| {
                own.iter()
                    .map(|(k, o)| (k.clone(), o.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut puts = futures::stream::iter(own)
            .map(|(key, value)| async move { self.store.put(&key, value).await })
            .buffer_unordered(BEATS_AT_ONCE);
        while let Some(put) = puts.next().await {
            if let Err(e) = put {
                tracing::warn!(error = %e, "presence heartbeat failed");
                return;
            }
        }
    }
}

/// Local users up to which contacts are filtered by PostgreSQL; with more,
/// the array would cost more than the rows it saves.
const FILTER_LOCAL_UP_TO: usize = 1000;

/// (user, contact) for each of `users` and each `local` user who shares a
/// conversation with them. With more than [`FILTER_LOCAL_UP_TO`] local
/// users, contacts elsewhere come too: pushing to them is a no-op.
async fn contact_pairs(
    pool: &PgPool,
    users: &[Uuid],
    local: &[Uuid],
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    if local.len() <= FILTER_LOCAL_UP_TO {
        sqlx::query_as(
            "SELECT DISTINCT me.user_id, other.user_id
             FROM conversation_members me
             JOIN conversation_members other ON other.conversation_id = me.conversation_id
             WHERE me.user_id = ANY($1) AND other.user_id = ANY($2)
               AND other.user_id <> me.user_id",
        )
        .bind(users)
        .bind(local)
        .fetch_all(pool)
        .await
    } else {
        sqlx::query_as(
            "SELECT DISTINCT me.user_id, other.user_id
             FROM conversation_members me
             JOIN conversation_members other ON other.conversation_id = me.conversation_id
             WHERE me.user_id = ANY($1) AND other.user_id <> me.user_id",
        )
        .bind(users)
        .fetch_all(pool)
        .await
    }
}

/// Pushes each of `changes` to this gateway's users who share a
/// conversation with its user, in order, with one query for all of them.
async fn tell_contacts(hub: &Hub, pool: &PgPool, changes: &[Change]) {
    let local: Vec<Uuid> = hub.local_users().into_iter().map(|u| u.0).collect();
    if local.is_empty() {
        return;
    }
    let mut users: Vec<Uuid> = changes.iter().map(|(user, ..)| user.0).collect();
    users.sort_unstable();
    users.dedup();
    let pairs = match contact_pairs(pool, &users, &local).await {
        Ok(pairs) => pairs,
        Err(e) => {
            tracing::warn!(error = %e, changes = changes.len(),
                "cannot look up contacts for presence changes");
            return;
        }
    };
    let mut contacts: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (user, contact) in pairs {
        contacts.entry(user).or_default().push(contact);
    }
    for (user, online, at) in changes {
        let Some(theirs) = contacts.get(&user.0) else {
            continue;
        };
        // Pushed only where the contact has a session here.
        let frame: Arc<str> = protocol::presence(*user, *online, *at).into();
        for contact in theirs {
            hub.push_frame(UserId(*contact), frame.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(user: UserId, gateway: Uuid) -> Vec<u8> {
        serde_json::to_vec(&Connection {
            user_id: user,
            device_id: DeviceId::default(),
            gateway,
            connected_at: Utc::now(),
        })
        .unwrap()
    }

    /// Conversations of `members` each, in `pool`.
    async fn conversations(pool: &PgPool, each: &[&[Uuid]]) {
        for members in each {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO conversations (id, kind, created_at, last_activity_at)
                 VALUES ($1, 'group', now(), now())",
            )
            .bind(id)
            .execute(pool)
            .await
            .unwrap();
            for member in *members {
                sqlx::query(
                    "INSERT INTO conversation_members (conversation_id, user_id) VALUES ($1, $2)",
                )
                .bind(id)
                .bind(member)
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }

    #[tokio::test]
    async fn contacts_are_found_with_the_local_filter_and_without_it() {
        let db = natter_testkit::database::TestDatabase::create(false)
            .await
            .unwrap();
        let pool = db.pool().await.unwrap();
        let [ann, bob, cat, dan, eve] = [(); 5].map(|()| Uuid::new_v4());
        // ann shares a conversation with bob and cat, cat one with dan; eve
        // with nobody.
        conversations(&pool, &[&[ann, bob, cat], &[cat, dan], &[eve]]).await;
        let local = [bob, cat, dan];
        let sorted = |mut pairs: Vec<(Uuid, Uuid)>| {
            pairs.sort_unstable();
            pairs
        };

        let few = sorted(contact_pairs(&pool, &[ann, eve], &local).await.unwrap());
        assert_eq!(few, sorted(vec![(ann, bob), (ann, cat)]));

        // More local users than the database filters: every contact comes,
        // and those who are local are the same.
        let mut many: Vec<Uuid> = (0..FILTER_LOCAL_UP_TO).map(|_| Uuid::new_v4()).collect();
        many.extend(local);
        let all = sorted(contact_pairs(&pool, &[ann, eve, dan], &many).await.unwrap());
        assert_eq!(all, sorted(vec![(ann, bob), (ann, cat), (dan, cat)]));
        let few_again = sorted(
            contact_pairs(&pool, &[ann, eve, dan], &local)
                .await
                .unwrap(),
        );
        assert_eq!(all, few_again);
        let outside = sorted(contact_pairs(&pool, &[cat], &many).await.unwrap());
        assert_eq!(outside, sorted(vec![(cat, ann), (cat, bob), (cat, dan)]));
        let inside = sorted(contact_pairs(&pool, &[cat], &[bob, dan]).await.unwrap());
        assert_eq!(inside, sorted(vec![(cat, bob), (cat, dan)]));
    }

    #[test]
    fn a_user_is_online_while_any_connection_is_and_flips_once_each_way() {
        let view = PresenceView::default();
        let user = UserId::generate();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (key_a, key_b) = (Presence::key(user, a, 1), Presence::key(user, b, 2));
        let flipped = view.apply(&key_a, Some(&connection(user, a)));
        assert!(matches!(flipped, Some((u, true, _)) if u == user));
        assert!(view.apply(&key_b, Some(&connection(user, b))).is_none());
        assert!(view.is_online(user));
        let users = view.active_users();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].connections, 2);
        assert_eq!(users[0].gateways.len(), 2);
        assert!(view.apply(&key_a, None).is_none());
        assert!(matches!(view.apply(&key_b, None), Some((_, false, _))));
        assert!(!view.is_online(user));
        assert!(view.active_users().is_empty());
    }

    #[test]
    fn entries_with_foreign_keys_or_values_change_nothing() {
        let view = PresenceView::default();
        assert!(view.apply("not-a-user.gw.1", Some(b"{}")).is_none());
        let user = UserId::generate();
        let key = Presence::key(user, Uuid::now_v7(), 1);
        assert!(view.apply(&key, Some(b"not json")).is_none());
        assert!(!view.is_online(user));
    }
}
