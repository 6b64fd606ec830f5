//! A simulated cloud backend, for tests and demos.
//!
//! It offers instances, volumes, ports and floating IPs whose runtime states
//! move on their own after [`SimConfig::transition_delay`], the way a real
//! cloud's do, so the executor's polling steps have something to wait for.
//! Nothing runs in the background: each call first settles the transitions
//! that are due, so an object's state is a pure function of the calls made
//! and the time passed.
//!
//! | kind | methods | runtime states (building → ready; erred; deleting) |
//! |---|---|---|
//! | `instance` | `create_instance`, `delete_instance`, `stop_instance`, `start_instance`, `restart_instance`, `resize_instance`, `update_instance`, `set_security_groups`, `pull_instance`, `is_instance_deleted` | `BUILD` → `ACTIVE`; `ERROR`; `DELETING`; also `SHUTOFF`, `REBOOT`, `RESIZE` |
//! | `volume` | `create_volume`, `extend_volume`, `update_volume`, `attach_volume`, `detach_volume`, `delete_volume`, `pull_volume`, `is_volume_deleted` | `creating` → `available`; `error`; `deleting`; also `extending`, `in-use` |
//! | `port` | `create_port`, `delete_port`, `pull_port`, `is_port_deleted` | `DOWN` → `ACTIVE`; `ERROR`; `DELETING` |
//! | `floating_ip` | `create_floating_ip`, `attach_floating_ip`, `detach_floating_ip`, `delete_floating_ip`, `pull_floating_ip`, `is_floating_ip_deleted` | `DOWN` → `ACTIVE`; `ERROR`; `DELETING` |
//!
//! Creates reply with the new `backend_id` and the building state; a port's
//! status gets its `security_groups` (from `attributes.security_groups`, an
//! array of strings; `[]` without), a floating IP's its `address`
//! (`203.0.113.N`, derived from its backend id). `pull_floating_ip` reports
//! `{"address", "attached_to"}` in the status as well as the state.
//!
//! Composite resources: a volume or floating IP is attached to the instance
//! of its *parent* resource ([`BackendCall::parent`], whose `backend_id`
//! names the instance):
//!
//! - `attach_volume` / `attach_floating_ip` need a parent (else a permanent
//!   error), an object that exists (else not found), built (`available` /
//!   `ACTIVE`), and a parent instance that exists and is not `DELETING` (else
//!   permanent). The reply's status is `{"attached_to": "<instance id>"}`;
//!   a volume becomes `in-use`, a floating IP stays `ACTIVE`. Attaching again
//!   to the same instance changes nothing; to another one is refused.
//! - `detach_volume` / `detach_floating_ip` need a parent too, and reply
//!   `{"attached_to": null}` (a volume is `available` again). Detaching what
//!   is not attached, or not there, succeeds; detaching from another instance
//!   than the one it is attached to is refused.
//! - Deletes enforce the order: an attached volume or floating IP cannot be
//!   deleted ("volume is in use"), nor an instance with anything attached
//!   ("instance has attached volumes ..."). Both are permanent errors.
//! - `set_security_groups` sets an instance's groups to
//!   `params.security_groups`, else `attributes.security_groups`, else `[]`,
//!   and replies `{"security_groups": [...]}` in the status.
//!
//! The cloud lives in one of two stores, with the same rules:
//!
//! - [`Sim::new`]: in this process's memory; each call runs under a mutex.
//! - [`Sim::shared`]: in PostgreSQL (the `sim_*` tables), so every process on
//!   the database sees the same cloud: an instance created by one worker can
//!   be pulled by another. Each call is one transaction, serialized on what it
//!   touches with advisory locks, and time is the database's clock.
//!
//! Failures are injected per resource through the reserved attribute object
//! `attributes.sim`:
//!
//! - `{"fail_on": "create_instance", "message": "No valid host was found"}`:
//!   that method fails permanently (the message is optional);
//! - `{"transient_failures": 2}`: the first two effectful calls for the
//!   resource fail transiently, then calls succeed;
//! - `{"hang_calls": 1}`: the first effectful call for the resource (in this
//!   process) never answers, as a hung backend would;
//! - `{"runtime_error": true}`: the object ends its build in `ERROR` / `error`.
//!
//! Failure injection, replays per idempotency key, the tenant quota and the
//! in-flight counts apply to every kind and method alike: ports and floating
//! IPs are objects like the others.
//!
//! The simulator also counts what it sees (calls, effects per idempotency key,
//! creations in flight per tenant, live objects by kind) so tests can check the executor's
//! guarantees from the outside. [`Sim::stats`] reads the store's counts (all
//! processes' in shared mode); the synchronous accessors ([`Sim::calls`],
//! [`Sim::effects_applied`], ...) report what this process saw, which for the
//! in-memory store is everything.

mod memory;
mod model;
mod shared;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Backend, BackendCall, BackendError, BackendReply, ListedObject, MethodInfo, MethodRole,
};
use memory::Memory;
use model::{METHODS, Outcome, Plan, RUNTIME_STATES};

/// How the simulated cloud behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Added to every method call (a `tokio::time::sleep` before it runs).
    pub latency: Duration,
    /// How long an object takes to move to its next runtime state on its own
    /// (`BUILD` to `ACTIVE`, `deleting` to gone, ...).
    pub transition_delay: Duration,
    /// Most live objects a tenant (`attributes.tenant`) may have; a create
    /// past it fails permanently, as a quota would.
    pub tenant_capacity: usize,
}

impl SimConfig {
    /// No latency and no transition delay: every transition is visible on the next call.
    pub fn instant() -> Self {
        Self {
            latency: Duration::ZERO,
            transition_delay: Duration::ZERO,
            ..Self::default()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            transition_delay: Duration::from_secs(1),
            tenant_capacity: 1000,
        }
    }
}

/// What a store counts, from [`Sim::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Live objects of every kind and tenant, deleting ones included until gone.
    pub objects: usize,
    /// [`SimStats::objects`] by kind (`instance`, `volume`, `port`,
    /// `floating_ip`); kinds with none are absent.
    pub objects_by_kind: BTreeMap<String, usize>,
    /// Effects applied in all, replays not counted.
    pub total_effects: u64,
    /// How many times effects were applied, by idempotency key (keys with
    /// none are absent): more than 1 means an idempotency violation.
    pub effects: HashMap<Uuid, u32>,
    /// Creations applied and not yet seen built by a pull (nor deleted), by
    /// tenant (tenants with none may be absent).
    pub in_flight: HashMap<String, usize>,
    /// The most creations each tenant ever had in flight at once.
    pub max_in_flight: HashMap<String, usize>,
}

impl SimStats {
    /// How many times effects were applied under `key`.
    pub fn effects_applied(&self, key: Uuid) -> u32 {
        self.effects.get(&key).copied().unwrap_or(0)
    }

    /// The keys whose effect was applied more than once: idempotency violations.
    pub fn repeated_effects(&self) -> Vec<Uuid> {
        let mut keys: Vec<Uuid> = self
            .effects
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(key, _)| *key)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Live objects of `kind` (`instance`, `volume`, `port`, `floating_ip`).
    pub fn objects_of(&self, kind: &str) -> usize {
        self.objects_by_kind.get(kind).copied().unwrap_or(0)
    }

    /// Creations of `tenant` in flight.
    pub fn in_flight(&self, tenant: &str) -> usize {
        self.in_flight.get(tenant).copied().unwrap_or(0)
    }

    /// The most creations `tenant` ever had in flight at once.
    pub fn max_in_flight(&self, tenant: &str) -> usize {
        self.max_in_flight.get(tenant).copied().unwrap_or(0)
    }
}

/// Where the cloud lives.
#[derive(Debug)]
enum Store {
    Memory(Mutex<Memory>),
    /// In the database; `flush`: a call's commit waits for its flush.
    Shared {
        pool: PgPool,
        flush: bool,
    },
}

/// What this process saw: kept in memory in both modes.
#[derive(Debug, Default)]
struct Seen {
    calls: HashMap<String, u64>,
    /// Injected hangs already given, by resource id (this process's).
    hangs: HashMap<Uuid, u64>,
    effects: HashMap<Uuid, u32>,
    total_effects: u64,
    max_in_flight: HashMap<String, usize>,
}

impl Seen {
    fn record<T>(&mut self, key: Uuid, outcome: &Outcome<T>) {
        if outcome.effect.is_some() {
            *self.effects.entry(key).or_default() += 1;
            self.total_effects += 1;
        }
        if let Some(created) = &outcome.created {
            let max = self
                .max_in_flight
                .entry(created.tenant.clone())
                .or_default();
            *max = (*max).max(created.in_flight);
        }
    }
}

/// A simulated cloud: see the module docs.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    store: Store,
    seen: Mutex<Seen>,
}

impl Sim {
    /// An empty cloud in this process's memory, behaving as `config` says.
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            store: Store::Memory(Mutex::new(Memory::default())),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The cloud kept in `pool`'s database (the `sim_*` tables, which the
    /// migrations create), shared by every `Sim::shared` on that database,
    /// in this process or another. `config` should be the same everywhere:
    /// each call uses its own process's. Database failures are transient
    /// errors (`sim store: ...`).
    pub fn shared(config: SimConfig, pool: PgPool) -> Self {
        Self {
            config,
            store: Store::Shared { pool, flush: true },
            seen: Mutex::new(Seen::default()),
        }
    }

    /// As [`Sim::shared`], for the service's own database: a call commits
    /// without waiting for its flush (`synchronous_commit` off for its
    /// transaction). The step that made the call records its outcome in the
    /// same database, and that commit waits for the flush, which takes the
    /// call's (written to the log before it) with it: a database crash can
    /// lose the call only with the outcome, and the step then runs again
    /// under the same idempotency key, as after any lost outcome. A cloud in
    /// another database (`executord fake-cloud --database-url`) keeps
    /// waiting ([`Sim::shared`]): nothing there flushes it for the caller.
    pub fn shared_with_the_service(config: SimConfig, pool: PgPool) -> Self {
        Self {
            config,
            store: Store::Shared { pool, flush: false },
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Changes the object `backend_id` behind executord's back (as someone
    /// at the cloud's console would): its runtime state, which must be one
    /// the sim knows, and attributes merged in (`flavor`, `size_gb` are what
    /// pulls report). `Ok(false)` if there is no such object.
    pub async fn tamper(
        &self,
        backend_id: &str,
        runtime_state: Option<&str>,
        attributes: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, BackendError> {
        let state = match runtime_state {
            Some(name) => Some(model::runtime_state(name).ok_or_else(|| {
                BackendError::Permanent(format!("the sim has no runtime state {name}"))
            })?),
            None => None,
        };
        match &self.store {
            Store::Memory(memory) => {
                Ok(lock(memory).tamper(Instant::now(), backend_id, state, attributes))
            }
            Store::Shared { pool, .. } => shared::tamper(pool, backend_id, state, attributes).await,
        }
    }

    /// Removes the object `backend_id` behind executord's back. `Ok(false)`
    /// if there was none.
    pub async fn vanish(&self, backend_id: &str) -> Result<bool, BackendError> {
        match &self.store {
            Store::Memory(memory) => Ok(lock(memory).vanish(backend_id)),
            Store::Shared { pool, .. } => shared::vanish(pool, backend_id).await,
        }
    }

    /// How this cloud behaves.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Whether the cloud is in the database ([`Sim::shared`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.store, Store::Shared { .. })
    }

    /// What the store counts: in shared mode, every process's objects and
    /// effects (read from the database, hence async and fallible).
    pub async fn stats(&self) -> Result<SimStats, BackendError> {
        match &self.store {
            Store::Memory(memory) => Ok(lock(memory).stats(Instant::now())),
            Store::Shared { pool, .. } => shared::stats(pool).await,
        }
    }

    /// How many times effects were applied under `key` by this process: more
    /// than 1 means an idempotency violation (a retry repeated its effect).
    /// In shared mode other processes' effects are not included: see [`Sim::stats`].
    pub fn effects_applied(&self, key: Uuid) -> u32 {
        self.seen().effects.get(&key).copied().unwrap_or(0)
    }

    /// Effects applied by this process in all, replays not counted.
    /// In shared mode other processes' effects are not included: see [`Sim::stats`].
    pub fn total_effects(&self) -> u64 {
        self.seen().total_effects
    }

    /// Creations of `tenant` applied and not yet seen built by a pull (nor
    /// deleted). In-memory store only: always 0 in shared mode, where
    /// [`Sim::stats`] has it.
    pub fn in_flight(&self, tenant: &str) -> usize {
        match &self.store {
            Store::Memory(memory) => lock(memory).in_flight(tenant),
            Store::Shared { .. } => 0,
        }
    }

    /// The most creations `tenant` had in flight at once, as seen by this
    /// process's creations (which, in shared mode, count every process's
    /// objects in flight at that moment; [`Sim::stats`] has the maximum over
    /// every process's creations).
    pub fn max_in_flight(&self, tenant: &str) -> usize {
        self.seen().max_in_flight.get(tenant).copied().unwrap_or(0)
    }

    /// How many times `method` was called on this process, failures and
    /// unknown names included.
    pub fn calls(&self, method: &str) -> u64 {
        self.seen().calls.get(method).copied().unwrap_or(0)
    }

    /// Live objects of every kind and tenant, deleting ones included until
    /// gone. In-memory store only: always 0 in shared mode, where
    /// [`Sim::stats`] has it.
    pub fn object_count(&self) -> usize {
        match &self.store {
            Store::Memory(memory) => lock(memory).object_count(Instant::now()),
            Store::Shared { .. } => 0,
        }
    }

    /// Settles the in-memory store's transitions as if it were `now`.
    #[cfg(test)]
    fn settle_at(&self, now: Instant) {
        if let Store::Memory(memory) = &self.store {
            lock(memory).settle(now);
        }
    }

    /// Whether this call should hang (`{"sim": {"hang_calls": n}}`: the first
    /// n effectful calls for the resource in this process never answer).
    fn hangs(&self, method: &str, call: &BackendCall) -> bool {
        let wanted = call
            .resource
            .attributes
            .get("sim")
            .and_then(|sim| sim.get("hang_calls"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let effect = METHODS
            .iter()
            .any(|m| m.name == method && m.role == MethodRole::Effect);
        if wanted == 0 || !effect {
            return false;
        }
        let mut seen = self.seen();
        let given = seen.hangs.entry(call.resource.id).or_default();
        *given += 1;
        *given <= wanted
    }

    fn seen(&self) -> MutexGuard<'_, Seen> {
        lock(&self.seen)
    }

    /// One call, after the latency.
    async fn call_now(
        &self,
        method: &str,
        call: &BackendCall,
    ) -> Result<BackendReply, BackendError> {
        let plan = Plan::new(method, call)?;
        let key = call.idempotency_key;
        match &self.store {
            Store::Memory(memory) => {
                // Recorded under the store's lock, so counts never lag the store.
                let mut memory = lock(memory);
                let outcome = memory.call(&self.config, &plan, call);
                self.seen().record(key, &outcome);
                outcome.result
            }
            Store::Shared { pool, flush } => {
                let outcome = shared::call(pool, *flush, &self.config, &plan, call).await?;
                self.seen().record(key, &outcome);
                outcome.result
            }
        }
    }
}

/// The guarded value, even if a test thread panicked while holding it: the
/// counters stay meaningful, and a sim must not turn one panic into many.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Backend for Sim {
    fn methods(&self) -> &[MethodInfo] {
        METHODS
    }

    fn runtime_states(&self) -> Vec<&str> {
        RUNTIME_STATES.to_vec()
    }

    async fn list(&self, method: &str, kind: &str) -> Result<Vec<ListedObject>, BackendError> {
        *self.seen().calls.entry(method.to_owned()).or_default() += 1;
        let noun = match model::Op::parse(method) {
            Some((noun, model::Op::List)) => noun.noun(),
            _ => {
                return Err(BackendError::Permanent(format!(
                    "sim backend has no list method {method} (for kind `{kind}`)"
                )));
            }
        };
        match &self.store {
            Store::Memory(memory) => Ok(lock(memory).list(Instant::now(), noun)),
            Store::Shared { pool, .. } => shared::list(pool, noun).await,
        }
    }

    async fn call(&self, method: &str, call: BackendCall) -> Result<BackendReply, BackendError> {
        // Counted on arrival, so a call abandoned during the latency counts too.
        *self.seen().calls.entry(method.to_owned()).or_default() += 1;
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if self.hangs(method, &call) {
            // A backend that never answers: only the caller's timeout ends this call.
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        }
        self.call_now(method, &call).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::ResourceView;
    use super::model::Op;
    use super::*;
    use serde_json::{Map, Value, json};

    pub(super) fn resource(attributes: Value) -> ResourceView {
        ResourceView {
            id: Uuid::now_v7(),
            kind: "server".to_owned(),
            name: "web-1".to_owned(),
            backend_id: None,
            runtime_state: None,
            attributes,
            status: json!({}),
        }
    }

    pub(super) fn call_on(resource: &ResourceView, params: Value) -> BackendCall {
        BackendCall {
            idempotency_key: Uuid::now_v7(),
            resource: resource.clone(),
            parent: None,
            params,
        }
    }

    /// A call on `resource`, a child of `parent`.
    pub(super) fn call_under(resource: &ResourceView, parent: &ResourceView) -> BackendCall {
        BackendCall {
            parent: Some(parent.clone()),
            ..call_on(resource, json!({}))
        }
    }

    /// Calls `method` with a fresh key and merges the reply into `resource`,
    /// as the executor would.
    pub(super) async fn step(
        sim: &Sim,
        method: &str,
        resource: &mut ResourceView,
        params: Value,
    ) -> Result<BackendReply, BackendError> {
        apply(sim, method, resource, call_on(resource, params)).await
    }

    /// Like [`step`], with `parent` as the resource's parent.
    pub(super) async fn step_under(
        sim: &Sim,
        method: &str,
        resource: &mut ResourceView,
        parent: &ResourceView,
    ) -> Result<BackendReply, BackendError> {
        apply(sim, method, resource, call_under(resource, parent)).await
    }

    /// Makes `call` and merges the reply into `resource`.
    async fn apply(
        sim: &Sim,
        method: &str,
        resource: &mut ResourceView,
        call: BackendCall,
    ) -> Result<BackendReply, BackendError> {
        let reply = sim.call(method, call).await?;
        if let Some(id) = &reply.backend_id {
            resource.backend_id = Some(id.clone());
        }
        if let Some(state) = &reply.runtime_state {
            resource.runtime_state = Some(state.clone());
        }
        Ok(reply)
    }

    pub(super) async fn pull(sim: &Sim, method: &str, resource: &ResourceView) -> String {
        let reply = sim
            .call(method, call_on(resource, json!({})))
            .await
            .unwrap();
        reply.runtime_state.unwrap()
    }

    /// Live objects, as the store counts them.
    pub(super) async fn objects(sim: &Sim) -> usize {
        sim.stats().await.unwrap().objects
    }

    /// A child object of `kind` (`volume`, `port`, `floating_ip`) that has
    /// finished building (instant config).
    pub(super) async fn ready_child(sim: &Sim, kind: &str, attributes: Value) -> ResourceView {
        let mut r = resource(attributes);
        r.kind = kind.to_owned();
        step(sim, &format!("create_{kind}"), &mut r, json!({}))
            .await
            .unwrap();
        r.runtime_state = Some(pull(sim, &format!("pull_{kind}"), &r).await);
        r
    }

    /// The message of a permanent error, or a panic.
    pub(super) fn permanent(result: Result<BackendReply, BackendError>) -> String {
        match result {
            Err(BackendError::Permanent(message)) => message,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    /// An instance that has finished building (instant config).
    pub(super) async fn active_instance(sim: &Sim, attributes: Value) -> ResourceView {
        let mut r = resource(attributes);
        step(sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(sim, "pull_instance", &r).await, "ACTIVE");
        r
    }

    #[test]
    fn every_method_parses_with_its_listed_role() {
        for info in METHODS {
            let (_, op) = Op::parse(&info.name).unwrap();
            assert_eq!(op.role(), info.role, "{}", info.name);
        }
        let sim = Sim::new(SimConfig::default());
        assert_eq!(sim.runtime_states().len(), 14);
        for state in ["in-use", "DOWN", "ACTIVE", "DELETING", "ERROR"] {
            assert!(sim.runtime_states().contains(&state), "{state}");
        }
        let names: Vec<&str> = sim.methods().iter().map(|m| m.name.as_ref()).collect();
        for name in [
            "attach_volume",
            "detach_volume",
            "set_security_groups",
            "create_port",
            "delete_port",
            "pull_port",
            "is_port_deleted",
            "create_floating_ip",
            "delete_floating_ip",
            "attach_floating_ip",
            "detach_floating_ip",
            "pull_floating_ip",
            "is_floating_ip_deleted",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        assert_eq!(sim.config().transition_delay, Duration::from_secs(1));
    }

    #[tokio::test]
    async fn create_then_pull_moves_build_to_active_after_the_delay() {
        let config = SimConfig {
            transition_delay: Duration::from_millis(300),
            ..SimConfig::default()
        };
        let sim = Sim::new(config);
        let mut r = resource(json!({"tenant": "t1"}));
        let reply = step(&sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap();
        let id = reply.backend_id.unwrap();
        assert!(id.starts_with("sim-") && id.len() == 36, "{id}");
        assert_eq!(reply.runtime_state.as_deref(), Some("BUILD"));
        assert_eq!(pull(&sim, "pull_instance", &r).await, "BUILD");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(pull(&sim, "pull_instance", &r).await, "ACTIVE");
        assert_eq!(sim.object_count(), 1);
        assert_eq!(sim.calls("pull_instance"), 2);
    }

    /// A rule of the sim, run on a given store.
    pub(super) type Scenario = for<'a> fn(&'a Sim) -> futures::future::BoxFuture<'a, ()>;

    /// The rules every store must keep alike, each run on the in-memory
    /// store here and on the database store in `shared`.
    pub(super) const SCENARIOS: &[(&str, Scenario)] = &[
        ("instant_config_shows_the_move_on_the_next_call", |sim| {
            Box::pin(instant_config_shows_the_move_on_the_next_call_on(sim))
        }),
        ("runtime_error_ends_the_build_in_error", |sim| {
            Box::pin(runtime_error_ends_the_build_in_error_on(sim))
        }),
        ("fail_on_fails_permanently_with_the_message", |sim| {
            Box::pin(fail_on_fails_permanently_with_the_message_on(sim))
        }),
        ("stop_requires_active_and_start_requires_shutoff", |sim| {
            Box::pin(stop_requires_active_and_start_requires_shutoff_on(sim))
        }),
        ("resize_returns_the_flavor", |sim| {
            Box::pin(resize_returns_the_flavor_on(sim))
        }),
        ("deletes_succeed_even_for_unknown_objects", |sim| {
            Box::pin(deletes_succeed_even_for_unknown_objects_on(sim))
        }),
        ("attached_volumes_fix_the_delete_order", |sim| {
            Box::pin(attached_volumes_fix_the_delete_order_on(sim))
        }),
        ("floating_ips_attach_to_their_server", |sim| {
            Box::pin(floating_ips_attach_to_their_server_on(sim))
        }),
        ("attach_needs_a_parent_and_a_live_object", |sim| {
            Box::pin(attach_needs_a_parent_and_a_live_object_on(sim))
        }),
        ("a_repeated_attach_replays_the_first_reply", |sim| {
            Box::pin(a_repeated_attach_replays_the_first_reply_on(sim))
        }),
        ("ports_and_security_groups", |sim| {
            Box::pin(ports_and_security_groups_on(sim))
        }),
    ];

    #[tokio::test]
    async fn every_rule_holds_in_memory() {
        for (name, scenario) in SCENARIOS {
            eprintln!("scenario {name}");
            scenario(&Sim::new(SimConfig::instant())).await;
        }
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn instant_config_shows_the_move_on_the_next_call_on(sim: &Sim) {
        let mut r = resource(json!({}));
        step(sim, "create_volume", &mut r, json!({})).await.unwrap();
        assert_eq!(pull(sim, "pull_volume", &r).await, "available");
        let reply = step(sim, "extend_volume", &mut r, json!({"size_gb": 20}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("extending"));
        assert_eq!(reply.status.unwrap()["size_gb"], json!(20));
        assert_eq!(pull(sim, "pull_volume", &r).await, "available");
        // Volumes are not instances.
        let err = sim
            .call("pull_instance", call_on(&r, json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn runtime_error_ends_the_build_in_error_on(sim: &Sim) {
        let mut r = resource(json!({"sim": {"runtime_error": true}}));
        step(sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(sim, "pull_instance", &r).await, "ERROR");
        let mut v = resource(json!({"sim": {"runtime_error": true}}));
        step(sim, "create_volume", &mut v, json!({})).await.unwrap();
        assert_eq!(pull(sim, "pull_volume", &v).await, "error");
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn fail_on_fails_permanently_with_the_message_on(sim: &Sim) {
        let mut r = resource(json!({
            "sim": {"fail_on": "create_instance", "message": "No valid host was found"}
        }));
        let err = step(sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("No valid host was found".to_owned())
        );
        assert_eq!(objects(sim).await, 0);
        assert_eq!(sim.total_effects(), 0);
        assert_eq!(sim.calls("create_instance"), 1);

        let mut r = active_instance(sim, json!({"sim": {"fail_on": "stop_instance"}})).await;
        let err = step(sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Simulated failure in stop_instance".to_owned())
        );
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn attached_volumes_fix_the_delete_order_on(sim: &Sim) {
        let mut server = active_instance(sim, json!({})).await;
        let server_id = server.backend_id.clone().unwrap();
        let mut v = ready_child(sim, "volume", json!({})).await;
        let vid = v.backend_id.clone().unwrap();
        assert_eq!(v.runtime_state.as_deref(), Some("available"));

        let reply = step_under(sim, "attach_volume", &mut v, &server)
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("in-use"));
        assert_eq!(reply.status.unwrap()["attached_to"], json!(server_id));
        assert_eq!(pull(sim, "pull_volume", &v).await, "in-use");
        // Attaching again to the same server changes nothing.
        let again = step_under(sim, "attach_volume", &mut v, &server)
            .await
            .unwrap();
        assert_eq!(again.runtime_state.as_deref(), Some("in-use"));
        // An attached volume cannot be deleted, nor the server it is attached to.
        let message = permanent(step(sim, "delete_volume", &mut v, json!({})).await);
        assert_eq!(
            message,
            format!(
                "Cannot delete volume {vid}: volume is in use (attached to instance {server_id})"
            )
        );
        let message = permanent(step(sim, "delete_instance", &mut server, json!({})).await);
        assert_eq!(
            message,
            format!("Cannot delete instance {server_id}: instance has attached volumes ({vid})")
        );
        assert_eq!(pull(sim, "pull_instance", &server).await, "ACTIVE");
        // Nor extended while attached, here.
        let err = step(sim, "extend_volume", &mut v, json!({"size_gb": 5})).await;
        assert_eq!(
            permanent(err),
            "Cannot extend volume in state in-use".to_owned()
        );

        let reply = step_under(sim, "detach_volume", &mut v, &server)
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("available"));
        assert_eq!(reply.status.unwrap()["attached_to"], Value::Null);
        // Detaching what is not attached succeeds.
        let reply = step_under(sim, "detach_volume", &mut v, &server)
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("available"));
        let stats = sim.stats().await.unwrap();
        assert_eq!(
            (stats.objects_of("instance"), stats.objects_of("volume")),
            (1, 1)
        );

        step(sim, "delete_volume", &mut v, json!({})).await.unwrap();
        step(sim, "delete_instance", &mut server, json!({}))
            .await
            .unwrap();
        let stats = sim.stats().await.unwrap();
        assert_eq!(stats.objects, 0);
        assert!(stats.objects_by_kind.is_empty(), "{stats:?}");
        // A gone volume is detached already.
        step_under(sim, "detach_volume", &mut v, &server)
            .await
            .unwrap();
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn floating_ips_attach_to_their_server_on(sim: &Sim) {
        let mut server = active_instance(sim, json!({})).await;
        let server_id = server.backend_id.clone().unwrap();
        let mut ip = resource(json!({}));
        ip.kind = "floating_ip".to_owned();
        let reply = step(sim, "create_floating_ip", &mut ip, json!({}))
            .await
            .unwrap();
        let ip_id = ip.backend_id.clone().unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("DOWN"));
        let address = reply.status.unwrap()["address"].clone();
        let text = address.as_str().unwrap();
        let n: u32 = text.strip_prefix("203.0.113.").unwrap().parse().unwrap();
        assert!((1..=254).contains(&n), "{text}");
        let pulled = sim
            .call("pull_floating_ip", call_on(&ip, json!({})))
            .await
            .unwrap();
        assert_eq!(pulled.runtime_state.as_deref(), Some("ACTIVE"));
        let status = pulled.status.unwrap();
        assert_eq!(
            (&status["address"], &status["attached_to"]),
            (&address, &Value::Null)
        );

        let reply = step_under(sim, "attach_floating_ip", &mut ip, &server)
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("ACTIVE"));
        assert_eq!(reply.status.unwrap()["attached_to"], json!(server_id));
        let pulled = sim
            .call("pull_floating_ip", call_on(&ip, json!({})))
            .await
            .unwrap();
        assert_eq!(pulled.status.unwrap()["attached_to"], json!(server_id));
        // Attached elsewhere already: refused.
        let other = active_instance(sim, json!({})).await;
        let other_id = other.backend_id.clone().unwrap();
        let message = permanent(step_under(sim, "attach_floating_ip", &mut ip, &other).await);
        assert_eq!(
            message,
            format!(
                "Cannot attach floating IP {ip_id} to instance {other_id}: \
                 it is attached to instance {server_id}"
            )
        );
        let message = permanent(step_under(sim, "detach_floating_ip", &mut ip, &other).await);
        assert_eq!(
            message,
            format!(
                "Cannot detach floating IP {ip_id} from instance {other_id}: \
                 it is attached to instance {server_id}"
            )
        );
        let message = permanent(step(sim, "delete_floating_ip", &mut ip, json!({})).await);
        assert!(message.contains("floating IP is in use"), "{message}");
        let mut v = ready_child(sim, "volume", json!({})).await;
        let vid = v.backend_id.clone().unwrap();
        step_under(sim, "attach_volume", &mut v, &server)
            .await
            .unwrap();
        let message = permanent(step(sim, "delete_instance", &mut server, json!({})).await);
        assert_eq!(
            message,
            format!(
                "Cannot delete instance {server_id}: instance has attached volumes ({vid}) \
                 and floating IPs ({ip_id})"
            )
        );

        let reply = step_under(sim, "detach_floating_ip", &mut ip, &server)
            .await
            .unwrap();
        assert_eq!(reply.status.unwrap()["attached_to"], Value::Null);
        step_under(sim, "detach_floating_ip", &mut ip, &server)
            .await
            .unwrap();
        step_under(sim, "detach_volume", &mut v, &server)
            .await
            .unwrap();
        for (method, r) in [
            ("delete_floating_ip", &mut ip),
            ("delete_volume", &mut v),
            ("delete_instance", &mut server),
        ] {
            let reply = step(sim, method, r, json!({})).await.unwrap();
            assert!(reply.runtime_state.is_some(), "{method}");
        }
        let deleted = sim
            .call("is_floating_ip_deleted", call_on(&ip, json!({})))
            .await
            .unwrap();
        assert_eq!(deleted.done, Some(true));
        let stats = sim.stats().await.unwrap();
        assert_eq!((stats.objects, stats.objects_of("instance")), (1, 1));
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn attach_needs_a_parent_and_a_live_object_on(sim: &Sim) {
        let server = active_instance(sim, json!({})).await;
        let mut v = ready_child(sim, "volume", json!({})).await;
        // No parent: a permanent error saying so, for attach and detach.
        for method in ["attach_volume", "detach_volume"] {
            let message = permanent(step(sim, method, &mut v, json!({})).await);
            assert_eq!(
                message,
                format!(
                    "{method} needs the server to act on, but resource {} has no parent",
                    v.id
                )
            );
        }
        // No object: not found.
        let mut unmade = resource(json!({}));
        let err = step_under(sim, "attach_volume", &mut unmade, &server).await;
        assert!(matches!(err, Err(BackendError::NotFound(_))), "{err:?}");
        let mut ghost = resource(json!({}));
        ghost.backend_id = Some("sim-gone".to_owned());
        let err = step_under(sim, "attach_floating_ip", &mut ghost, &server).await;
        assert_eq!(
            err,
            Err(BackendError::NotFound(
                "floating_ip sim-gone not found".to_owned()
            ))
        );
        // The server must exist and not be deleting.
        let mut unbuilt = resource(json!({}));
        let message = permanent(step_under(sim, "attach_volume", &mut v, &unbuilt).await);
        assert!(message.contains("has no backend id"), "{message}");
        unbuilt.backend_id = Some("sim-nowhere".to_owned());
        let message = permanent(step_under(sim, "attach_volume", &mut v, &unbuilt).await);
        assert_eq!(message, "instance sim-nowhere not found");
        // A volume is no server.
        let not_a_server = v.clone();
        let message = permanent(step_under(sim, "attach_volume", &mut v, &not_a_server).await);
        assert!(message.ends_with("not found"), "{message}");
        let mut doomed = active_instance(sim, json!({})).await;
        let config = sim.config().clone();
        step(sim, "delete_instance", &mut doomed, json!({}))
            .await
            .unwrap();
        let result = step_under(sim, "attach_volume", &mut v, &doomed).await;
        if config.transition_delay.is_zero() {
            // Already gone.
            assert!(permanent(result).ends_with("not found"));
        } else {
            assert!(permanent(result).ends_with("in state DELETING"));
        }
        assert_eq!(pull(sim, "pull_volume", &v).await, "available");
        // Injected failures apply to attaches too.
        let mut failing = ready_child(
            sim,
            "volume",
            json!({"sim": {"fail_on": "attach_volume", "message": "attachment refused"}}),
        )
        .await;
        let message = permanent(step_under(sim, "attach_volume", &mut failing, &server).await);
        assert_eq!(message, "attachment refused");
        assert_eq!(pull(sim, "pull_volume", &failing).await, "available");
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn a_repeated_attach_replays_the_first_reply_on(sim: &Sim) {
        let server = active_instance(sim, json!({})).await;
        let mut v = ready_child(sim, "volume", json!({})).await;
        let attach = call_under(&v, &server);
        let first = sim.call("attach_volume", attach.clone()).await.unwrap();
        let again = sim.call("attach_volume", attach.clone()).await.unwrap();
        assert_eq!(first, again);
        step_under(sim, "detach_volume", &mut v, &server)
            .await
            .unwrap();
        // A late repeat of the attach replays its reply and does not attach again.
        let late = sim.call("attach_volume", attach.clone()).await.unwrap();
        assert_eq!(late, first);
        assert_eq!(pull(sim, "pull_volume", &v).await, "available");
        let stats = sim.stats().await.unwrap();
        assert_eq!(stats.effects_applied(attach.idempotency_key), 1);
        assert!(stats.repeated_effects().is_empty());
        // The same key on detach is a caller bug, not a replay.
        let err = sim.call("detach_volume", attach).await.unwrap_err();
        assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn ports_and_security_groups_on(sim: &Sim) {
        let mut failing = resource(json!({
            "sim": {"fail_on": "create_port", "message": "No more ports on the network"}
        }));
        let message = permanent(step(sim, "create_port", &mut failing, json!({})).await);
        assert_eq!(message, "No more ports on the network");
        assert_eq!(objects(sim).await, 0);
        let message = permanent(
            step(
                sim,
                "create_port",
                &mut resource(json!({"security_groups": "web"})),
                json!({}),
            )
            .await,
        );
        assert!(
            message.contains("security_groups must be an array of strings"),
            "{message}"
        );

        let mut port = resource(json!({"security_groups": ["web", "ssh"]}));
        let reply = step(sim, "create_port", &mut port, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("DOWN"));
        assert_eq!(
            reply.status.unwrap()["security_groups"],
            json!(["web", "ssh"])
        );
        assert_eq!(pull(sim, "pull_port", &port).await, "ACTIVE");
        let mut broken = resource(json!({"sim": {"runtime_error": true}}));
        step(sim, "create_port", &mut broken, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(sim, "pull_port", &broken).await, "ERROR");
        assert_eq!(sim.stats().await.unwrap().objects_of("port"), 2);
        for p in [&mut port, &mut broken] {
            let reply = step(sim, "delete_port", p, json!({})).await.unwrap();
            assert_eq!(reply.runtime_state.as_deref(), Some("DELETING"));
            let deleted = sim
                .call("is_port_deleted", call_on(p, json!({})))
                .await
                .unwrap();
            assert_eq!(deleted.done, Some(true));
        }

        let mut server = active_instance(sim, json!({"security_groups": ["default"]})).await;
        let reply = step(sim, "set_security_groups", &mut server, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.status.unwrap()["security_groups"], json!(["default"]));
        let reply = step(
            sim,
            "set_security_groups",
            &mut server,
            json!({"security_groups": ["web"]}),
        )
        .await
        .unwrap();
        assert_eq!(reply.runtime_state, None);
        assert_eq!(reply.status.unwrap()["security_groups"], json!(["web"]));
        let message = permanent(
            step(
                sim,
                "set_security_groups",
                &mut server,
                json!({"security_groups": [1]}),
            )
            .await,
        );
        assert!(message.starts_with("set_security_groups: "), "{message}");
        let mut bare = active_instance(sim, json!({})).await;
        let reply = step(sim, "set_security_groups", &mut bare, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.status.unwrap()["security_groups"], json!([]));
        // Not on a port.
        let message = permanent(step(sim, "set_security_groups", &mut port, json!({})).await);
        assert!(message.ends_with("not found"), "{message}");
    }

    #[tokio::test]
    async fn attaches_wait_for_the_builds_and_refuse_a_deleting_server() {
        let config = SimConfig {
            transition_delay: Duration::from_secs(60),
            ..SimConfig::default()
        };
        let sim = Sim::new(config);
        let mut server = resource(json!({}));
        step(&sim, "create_instance", &mut server, json!({}))
            .await
            .unwrap();
        let mut v = resource(json!({}));
        step(&sim, "create_volume", &mut v, json!({}))
            .await
            .unwrap();
        let mut ip = resource(json!({}));
        step(&sim, "create_floating_ip", &mut ip, json!({}))
            .await
            .unwrap();
        let vid = v.backend_id.clone().unwrap();
        let message = permanent(step_under(&sim, "attach_volume", &mut v, &server).await);
        assert_eq!(
            message,
            format!("Cannot attach volume {vid} in state creating")
        );
        let message = permanent(step_under(&sim, "attach_floating_ip", &mut ip, &server).await);
        assert!(message.ends_with("in state DOWN"), "{message}");
        sim.settle_at(Instant::now() + Duration::from_secs(61));
        assert_eq!(pull(&sim, "pull_floating_ip", &ip).await, "ACTIVE");
        step_under(&sim, "attach_volume", &mut v, &server)
            .await
            .unwrap();
        step_under(&sim, "attach_floating_ip", &mut ip, &server)
            .await
            .unwrap();
        step_under(&sim, "detach_volume", &mut v, &server)
            .await
            .unwrap();
        step_under(&sim, "detach_floating_ip", &mut ip, &server)
            .await
            .unwrap();
        step(&sim, "delete_instance", &mut server, json!({}))
            .await
            .unwrap();
        let message = permanent(step_under(&sim, "attach_volume", &mut v, &server).await);
        let server_id = server.backend_id.clone().unwrap();
        assert_eq!(
            message,
            format!("Cannot attach volume to instance {server_id} in state DELETING")
        );
        let stats = sim.stats().await.unwrap();
        let kinds: Vec<(&str, usize)> = stats
            .objects_by_kind
            .iter()
            .map(|(kind, n)| (kind.as_str(), *n))
            .collect();
        assert_eq!(kinds, [("floating_ip", 1), ("instance", 1), ("volume", 1)]);
        assert_eq!(stats.objects, 3);
    }

    #[tokio::test]
    async fn ports_and_floating_ips_count_against_the_quota_and_in_flight() {
        let config = SimConfig {
            tenant_capacity: 2,
            ..SimConfig::instant()
        };
        let sim = Sim::new(config);
        let mut port = resource(json!({"tenant": "acme"}));
        step(&sim, "create_port", &mut port, json!({}))
            .await
            .unwrap();
        let mut ip = resource(json!({"tenant": "acme"}));
        step(&sim, "create_floating_ip", &mut ip, json!({}))
            .await
            .unwrap();
        assert_eq!(sim.in_flight("acme"), 2);
        let message = permanent(
            step(
                &sim,
                "create_instance",
                &mut resource(json!({"tenant": "acme"})),
                json!({}),
            )
            .await,
        );
        assert_eq!(message, "Quota exceeded: tenant acme already has 2 objects");
        assert_eq!(pull(&sim, "pull_port", &port).await, "ACTIVE");
        assert_eq!(pull(&sim, "pull_floating_ip", &ip).await, "ACTIVE");
        assert_eq!(sim.in_flight("acme"), 0);
        assert_eq!(sim.max_in_flight("acme"), 2);
    }

    #[tokio::test]
    async fn transient_failures_and_hangs_apply_to_attaches() {
        let sim = Sim::new(SimConfig::instant());
        let server = active_instance(&sim, json!({})).await;
        // Failures set once built, so that the create is not the one failing.
        let mut v = ready_child(&sim, "volume", json!({})).await;
        v.attributes = json!({"sim": {"transient_failures": 1}});
        let attach = call_under(&v, &server);
        let err = sim.call("attach_volume", attach.clone()).await.unwrap_err();
        let expected = "Simulated transient failure (1 of 1)".to_owned();
        assert_eq!(err, BackendError::Transient(expected));
        assert_eq!(sim.effects_applied(attach.idempotency_key), 0);
        let reply = sim.call("attach_volume", attach.clone()).await.unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("in-use"));
        assert_eq!(sim.effects_applied(attach.idempotency_key), 1);

        let mut ip = ready_child(&sim, "floating_ip", json!({})).await;
        ip.attributes = json!({"sim": {"hang_calls": 1}});
        let attach = call_under(&ip, &server);
        let hung = tokio::time::timeout(
            Duration::from_millis(50),
            sim.call("attach_floating_ip", attach.clone()),
        )
        .await;
        assert!(hung.is_err(), "the first effectful call hangs");
        sim.call("attach_floating_ip", attach).await.unwrap();
    }

    #[tokio::test]
    async fn transient_failures_then_success() {
        let sim = Sim::new(SimConfig::instant());
        let r = resource(json!({"sim": {"transient_failures": 2}}));
        let call = call_on(&r, json!({}));
        for i in 1..=2 {
            let err = sim.call("create_instance", call.clone()).await.unwrap_err();
            let expected = format!("Simulated transient failure ({i} of 2)");
            assert_eq!(err, BackendError::Transient(expected));
        }
        assert_eq!(sim.effects_applied(call.idempotency_key), 0);
        let reply = sim.call("create_instance", call.clone()).await.unwrap();
        assert!(reply.backend_id.is_some());
        assert_eq!(sim.effects_applied(call.idempotency_key), 1);
        assert_eq!(sim.calls("create_instance"), 3);
    }

    #[tokio::test]
    async fn a_repeated_create_replays_the_first_reply() {
        let sim = Sim::new(SimConfig::instant());
        let call = call_on(&resource(json!({"tenant": "t"})), json!({}));
        let first = sim.call("create_instance", call.clone()).await.unwrap();
        let again = sim.call("create_instance", call.clone()).await.unwrap();
        let third = sim.call("create_instance", call.clone()).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(first, third);
        assert_eq!(sim.effects_applied(call.idempotency_key), 1);
        assert_eq!(sim.total_effects(), 1);
        assert_eq!(sim.object_count(), 1);
        assert_eq!(sim.in_flight("t"), 1);
        // The same key on another method is a caller bug, not a replay.
        let err = sim.call("delete_instance", call).await.unwrap_err();
        assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_repeated_stop_does_not_transition_twice() {
        let config = SimConfig {
            transition_delay: Duration::from_secs(60),
            ..SimConfig::default()
        };
        let sim = Sim::new(config);
        let mut r = resource(json!({}));
        step(&sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap();
        // Still building: not stoppable, and the failure is not remembered.
        let call = call_on(&r, json!({}));
        let err = sim.call("stop_instance", call.clone()).await.unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Cannot stop instance in state BUILD".to_owned())
        );
        assert_eq!(sim.effects_applied(call.idempotency_key), 0);
        sim.settle_at(Instant::now() + Duration::from_secs(61));
        let first = sim.call("stop_instance", call.clone()).await.unwrap();
        let again = sim.call("stop_instance", call.clone()).await.unwrap();
        assert_eq!(first, again);
        assert_eq!(sim.effects_applied(call.idempotency_key), 1);
        // A new stop while the first is under way is refused.
        let err = step(&sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        let expected = "Cannot stop instance in state ACTIVE (changing to SHUTOFF)";
        assert_eq!(err, BackendError::Permanent(expected.to_owned()));
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn stop_requires_active_and_start_requires_shutoff_on(sim: &Sim) {
        let mut r = active_instance(sim, json!({})).await;
        let err = step(sim, "start_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Cannot start instance in state ACTIVE".to_owned())
        );
        let reply = step(sim, "stop_instance", &mut r, json!({})).await.unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("ACTIVE"));
        assert_eq!(pull(sim, "pull_instance", &r).await, "SHUTOFF");
        let err = step(sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Cannot stop instance in state SHUTOFF".to_owned())
        );
        step(sim, "start_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(sim, "pull_instance", &r).await, "ACTIVE");
        let reply = step(sim, "restart_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("REBOOT"));
        assert_eq!(pull(sim, "pull_instance", &r).await, "ACTIVE");

        let mut ghost = resource(json!({}));
        ghost.backend_id = Some("sim-nope".to_owned());
        let err = step(sim, "stop_instance", &mut ghost, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("instance sim-nope not found".to_owned())
        );
        let err = step(sim, "update_instance", &mut ghost, json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn resize_returns_the_flavor_on(sim: &Sim) {
        let mut r = active_instance(sim, json!({"flavor": "m1.small"})).await;
        let err = step(
            sim,
            "resize_instance",
            &mut r,
            json!({"flavor": "m1.large"}),
        )
        .await;
        assert!(matches!(err, Err(BackendError::Permanent(_))), "{err:?}");
        step(sim, "stop_instance", &mut r, json!({})).await.unwrap();
        let err = step(sim, "resize_instance", &mut r, json!({})).await;
        assert!(matches!(err, Err(BackendError::Permanent(_))), "{err:?}");
        let reply = step(
            sim,
            "resize_instance",
            &mut r,
            json!({"flavor": "m1.large"}),
        )
        .await
        .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("RESIZE"));
        let mut expected = Map::new();
        expected.insert("flavor".to_owned(), json!("m1.large"));
        assert_eq!(reply.status, Some(expected));
        assert_eq!(pull(sim, "pull_instance", &r).await, "SHUTOFF");
        let reply = step(sim, "update_instance", &mut r, json!({"name": "web-2"}))
            .await
            .unwrap();
        assert_eq!(reply, BackendReply::default());
    }

    /// A rule of the sim, on any store (see [`SCENARIOS`]).
    pub(super) async fn deletes_succeed_even_for_unknown_objects_on(sim: &Sim) {
        let mut ghost = resource(json!({}));
        ghost.backend_id = Some("sim-unknown".to_owned());
        let reply = step(sim, "delete_instance", &mut ghost, json!({}))
            .await
            .unwrap();
        assert_eq!(reply, BackendReply::default());
        let reply = sim
            .call("is_instance_deleted", call_on(&ghost, json!({})))
            .await
            .unwrap();
        assert_eq!(reply.done, Some(true));

        let mut r = active_instance(sim, json!({})).await;
        let reply = step(sim, "delete_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("DELETING"));
        assert_eq!(objects(sim).await, 0);
        let reply = sim
            .call("is_instance_deleted", call_on(&r, json!({})))
            .await
            .unwrap();
        assert_eq!(reply.done, Some(true));
        let err = sim
            .call("pull_instance", call_on(&r, json!({})))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::NotFound(format!("instance {} not found", r.backend_id.unwrap()))
        );
    }

    #[tokio::test]
    async fn is_deleted_is_false_while_deleting() {
        let config = SimConfig {
            transition_delay: Duration::from_secs(60),
            ..SimConfig::default()
        };
        let sim = Sim::new(config);
        let mut v = resource(json!({}));
        step(&sim, "create_volume", &mut v, json!({}))
            .await
            .unwrap();
        step(&sim, "delete_volume", &mut v, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(&sim, "pull_volume", &v).await, "deleting");
        let reply = sim
            .call("is_volume_deleted", call_on(&v, json!({})))
            .await
            .unwrap();
        assert_eq!(reply.done, Some(false));
    }

    #[tokio::test]
    async fn quota_limits_live_objects_per_tenant() {
        let config = SimConfig {
            tenant_capacity: 2,
            ..SimConfig::instant()
        };
        let sim = Sim::new(config);
        let mut a = resource(json!({"tenant": "acme"}));
        step(&sim, "create_instance", &mut a, json!({}))
            .await
            .unwrap();
        step(
            &sim,
            "create_volume",
            &mut resource(json!({"tenant": "acme"})),
            json!({}),
        )
        .await
        .unwrap();
        let err = step(
            &sim,
            "create_instance",
            &mut resource(json!({"tenant": "acme"})),
            json!({}),
        )
        .await
        .unwrap_err();
        let expected = "Quota exceeded: tenant acme already has 2 objects";
        assert_eq!(err, BackendError::Permanent(expected.to_owned()));
        // Other tenants are not affected, and a delete frees room.
        step(
            &sim,
            "create_instance",
            &mut resource(json!({"tenant": "other"})),
            json!({}),
        )
        .await
        .unwrap();
        step(&sim, "delete_instance", &mut a, json!({}))
            .await
            .unwrap();
        step(
            &sim,
            "create_instance",
            &mut resource(json!({"tenant": "acme"})),
            json!({}),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn max_in_flight_tracks_creations_until_pulled_or_deleted() {
        let sim = Sim::new(SimConfig::instant());
        let mut rs = Vec::new();
        for _ in 0..3 {
            let mut r = resource(json!({"tenant": "t"}));
            step(&sim, "create_instance", &mut r, json!({}))
                .await
                .unwrap();
            rs.push(r);
        }
        assert_eq!(sim.in_flight("t"), 3);
        assert_eq!(pull(&sim, "pull_instance", &rs[0]).await, "ACTIVE");
        assert_eq!(pull(&sim, "pull_instance", &rs[0]).await, "ACTIVE");
        assert_eq!(sim.in_flight("t"), 2);
        step(&sim, "delete_instance", &mut rs[1], json!({}))
            .await
            .unwrap();
        assert_eq!(sim.in_flight("t"), 1);
        step(
            &sim,
            "create_volume",
            &mut resource(json!({"tenant": "t"})),
            json!({}),
        )
        .await
        .unwrap();
        assert_eq!(sim.in_flight("t"), 2);
        assert_eq!(sim.max_in_flight("t"), 3);
        assert_eq!(sim.max_in_flight("nobody"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creations_are_all_counted() {
        let config = SimConfig {
            latency: Duration::from_millis(5),
            ..SimConfig::instant()
        };
        let sim = std::sync::Arc::new(Sim::new(config));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let sim = sim.clone();
                tokio::spawn(async move {
                    let call = call_on(&resource(json!({"tenant": "busy"})), json!({}));
                    sim.call("create_instance", call).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(sim.max_in_flight("busy"), 8);
        assert_eq!(sim.total_effects(), 8);
    }

    #[tokio::test]
    async fn stats_agree_with_the_sync_counters_in_memory() {
        let config = SimConfig {
            transition_delay: Duration::from_secs(60),
            ..SimConfig::default()
        };
        let sim = Sim::new(config);
        assert!(!sim.is_shared());
        assert_eq!(sim.stats().await.unwrap(), SimStats::default());
        let mut keys = Vec::new();
        for tenant in ["a", "a", "b"] {
            let call = call_on(&resource(json!({"tenant": tenant})), json!({}));
            sim.call("create_volume", call.clone()).await.unwrap();
            sim.call("create_volume", call.clone()).await.unwrap();
            keys.push(call.idempotency_key);
        }
        let stats = sim.stats().await.unwrap();
        assert_eq!(stats.objects, sim.object_count());
        assert_eq!(stats.objects, 3);
        assert_eq!(stats.total_effects, sim.total_effects());
        for key in keys {
            assert_eq!(stats.effects_applied(key), 1);
            assert_eq!(sim.effects_applied(key), 1);
        }
        assert!(stats.repeated_effects().is_empty());
        assert_eq!((stats.in_flight("a"), sim.in_flight("a")), (2, 2));
        assert_eq!((stats.max_in_flight("a"), sim.max_in_flight("a")), (2, 2));
        assert_eq!((stats.in_flight("b"), stats.max_in_flight("b")), (1, 1));
        assert_eq!(stats.in_flight("nobody"), 0);
    }

    #[tokio::test]
    async fn unknown_methods_are_permanent_errors() {
        let sim = Sim::new(SimConfig::instant());
        let err = sim
            .call(
                "reboot_everything",
                call_on(&resource(json!({})), json!({})),
            )
            .await;
        let expected = "sim backend has no method reboot_everything";
        assert_eq!(err, Err(BackendError::Permanent(expected.to_owned())));
        assert_eq!(sim.calls("reboot_everything"), 1);
    }
}
