//! An in-process simulated cloud backend, for tests and demos.
//!
//! It offers instances and volumes whose runtime states move on their own
//! after [`SimConfig::transition_delay`], the way a real cloud's do, so the
//! executor's polling steps have something to wait for. Nothing runs in the
//! background: each call first settles every transition that is due, so an
//! object's state is a pure function of the calls made and the time passed.
//!
//! Failures are injected per resource through the reserved attribute object
//! `attributes.sim`:
//!
//! - `{"fail_on": "create_instance", "message": "No valid host was found"}`:
//!   that method fails permanently (the message is optional);
//! - `{"transient_failures": 2}`: the first two effectful calls for the
//!   resource fail transiently, then calls succeed;
//! - `{"runtime_error": true}`: the object ends its build in `ERROR` / `error`.
//!
//! The simulator also counts what it sees (calls, effects per idempotency key,
//! creations in flight per tenant) so tests can check the executor's
//! guarantees from the outside.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Backend, BackendCall, BackendError, BackendReply, MethodInfo, MethodRole};

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

/// The methods the simulator offers; roles follow [`Op::role`].
static METHODS: &[MethodInfo] = &[
    method("create_instance", MethodRole::Effect),
    method("delete_instance", MethodRole::Effect),
    method("stop_instance", MethodRole::Effect),
    method("start_instance", MethodRole::Effect),
    method("restart_instance", MethodRole::Effect),
    method("resize_instance", MethodRole::Effect),
    method("update_instance", MethodRole::Effect),
    method("pull_instance", MethodRole::Pull),
    method("is_instance_deleted", MethodRole::Check),
    method("create_volume", MethodRole::Effect),
    method("extend_volume", MethodRole::Effect),
    method("update_volume", MethodRole::Effect),
    method("delete_volume", MethodRole::Effect),
    method("pull_volume", MethodRole::Pull),
    method("is_volume_deleted", MethodRole::Check),
];

const fn method(name: &'static str, role: MethodRole) -> MethodInfo {
    MethodInfo { name, role }
}

static RUNTIME_STATES: &[&str] = &[
    "BUILD",
    "ACTIVE",
    "SHUTOFF",
    "REBOOT",
    "RESIZE",
    "DELETING",
    "ERROR",
    "creating",
    "available",
    "extending",
    "deleting",
    "error",
];

/// The kinds of object the simulator holds, with their state names
/// (instances use Nova's, volumes Cinder's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Instance,
    Volume,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Volume => "volume",
        }
    }

    fn building(self) -> &'static str {
        match self {
            Kind::Instance => "BUILD",
            Kind::Volume => "creating",
        }
    }

    fn ready(self) -> &'static str {
        match self {
            Kind::Instance => "ACTIVE",
            Kind::Volume => "available",
        }
    }

    fn erred(self) -> &'static str {
        match self {
            Kind::Instance => "ERROR",
            Kind::Volume => "error",
        }
    }

    fn deleting(self) -> &'static str {
        match self {
            Kind::Instance => "DELETING",
            Kind::Volume => "deleting",
        }
    }
}

/// What a method does, independent of the kind it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Delete,
    Update,
    Stop,
    Start,
    Restart,
    Resize,
    Extend,
    Pull,
    IsDeleted,
}

impl Op {
    fn parse(method: &str) -> Option<(Kind, Op)> {
        let found = match method {
            "create_instance" => (Kind::Instance, Op::Create),
            "delete_instance" => (Kind::Instance, Op::Delete),
            "update_instance" => (Kind::Instance, Op::Update),
            "stop_instance" => (Kind::Instance, Op::Stop),
            "start_instance" => (Kind::Instance, Op::Start),
            "restart_instance" => (Kind::Instance, Op::Restart),
            "resize_instance" => (Kind::Instance, Op::Resize),
            "pull_instance" => (Kind::Instance, Op::Pull),
            "is_instance_deleted" => (Kind::Instance, Op::IsDeleted),
            "create_volume" => (Kind::Volume, Op::Create),
            "delete_volume" => (Kind::Volume, Op::Delete),
            "update_volume" => (Kind::Volume, Op::Update),
            "extend_volume" => (Kind::Volume, Op::Extend),
            "pull_volume" => (Kind::Volume, Op::Pull),
            "is_volume_deleted" => (Kind::Volume, Op::IsDeleted),
            _ => return None,
        };
        Some(found)
    }

    fn role(self) -> MethodRole {
        match self {
            Op::Pull => MethodRole::Pull,
            Op::IsDeleted => MethodRole::Check,
            _ => MethodRole::Effect,
        }
    }

    /// For actions: the state the object must be in, the state it shows
    /// meanwhile, and the state it reaches after the transition delay.
    fn transition(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Op::Stop => Some(("ACTIVE", "ACTIVE", "SHUTOFF")),
            Op::Start => Some(("SHUTOFF", "SHUTOFF", "ACTIVE")),
            Op::Restart => Some(("ACTIVE", "REBOOT", "ACTIVE")),
            Op::Resize => Some(("SHUTOFF", "RESIZE", "SHUTOFF")),
            Op::Extend => Some(("available", "extending", "available")),
            _ => None,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Delete => "delete",
            Op::Update => "update",
            Op::Stop => "stop",
            Op::Start => "start",
            Op::Restart => "restart",
            Op::Resize => "resize",
            Op::Extend => "extend",
            Op::Pull => "pull",
            Op::IsDeleted => "check",
        }
    }
}

/// Where a pending transition leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    To(&'static str),
    /// The object disappears (the end of a delete).
    Gone,
}

#[derive(Debug)]
struct Object {
    kind: Kind,
    tenant: String,
    attributes: Value,
    state: &'static str,
    pending: Option<(Next, Instant)>,
    /// Counted in its tenant's in-flight creations until a pull sees it built.
    building: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Live objects by backend id.
    objects: HashMap<String, Object>,
    /// The method and reply of each idempotency key's first successful effect.
    replies: HashMap<Uuid, (String, BackendReply)>,
    effects: HashMap<Uuid, u32>,
    total_effects: u64,
    /// Injected transient failures already given, by resource id.
    transient_given: HashMap<Uuid, u32>,
    calls: HashMap<String, u64>,
    in_flight: HashMap<String, usize>,
    max_in_flight: HashMap<String, usize>,
}

/// The failure-injection options read from `attributes.sim`.
#[derive(Debug, Default)]
struct Options {
    fail_on: Option<String>,
    message: Option<String>,
    transient_failures: u32,
    runtime_error: bool,
}

impl Options {
    fn of(attributes: &Value) -> Self {
        let Some(sim) = attributes.get("sim").and_then(Value::as_object) else {
            return Self::default();
        };
        Self {
            fail_on: sim
                .get("fail_on")
                .and_then(Value::as_str)
                .map(str::to_owned),
            message: sim
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
            transient_failures: sim
                .get("transient_failures")
                .and_then(Value::as_u64)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            runtime_error: sim.get("runtime_error").and_then(Value::as_bool) == Some(true),
        }
    }
}

/// An in-process simulated cloud: see the module docs.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    state: Mutex<State>,
}

impl Sim {
    /// An empty cloud behaving as `config` says.
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// How this cloud behaves.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// How many times effects were applied under `key`: more than 1 means an
    /// idempotency violation (a retry repeated its effect).
    pub fn effects_applied(&self, key: Uuid) -> u32 {
        self.lock().effects.get(&key).copied().unwrap_or(0)
    }

    /// Effects applied in all, replays not counted.
    pub fn total_effects(&self) -> u64 {
        self.lock().total_effects
    }

    /// Creations of `tenant` applied and not yet seen built by a pull (nor deleted).
    pub fn in_flight(&self, tenant: &str) -> usize {
        self.lock().in_flight.get(tenant).copied().unwrap_or(0)
    }

    /// The most creations `tenant` ever had in flight at once.
    pub fn max_in_flight(&self, tenant: &str) -> usize {
        self.lock().max_in_flight.get(tenant).copied().unwrap_or(0)
    }

    /// How many times `method` was called, failures and unknown names included.
    pub fn calls(&self, method: &str) -> u64 {
        self.lock().calls.get(method).copied().unwrap_or(0)
    }

    /// Live objects of every kind and tenant, deleting ones included until gone.
    pub fn object_count(&self) -> usize {
        let mut state = self.lock();
        state.settle(Instant::now());
        state.objects.len()
    }

    /// The state, even if a test thread panicked while holding it: the
    /// counters stay meaningful, and a sim must not turn one panic into many.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One call, run entirely under the lock (no await inside).
    fn call_now(&self, method: &str, call: &BackendCall) -> Result<BackendReply, BackendError> {
        let mut state = self.lock();
        let Some((kind, op)) = Op::parse(method) else {
            return Err(BackendError::Permanent(format!(
                "sim backend has no method {method}"
            )));
        };
        let now = Instant::now();
        state.settle(now);
        let options = Options::of(&call.resource.attributes);
        let key = call.idempotency_key;

        if op.role() == MethodRole::Effect {
            if let Some((first, reply)) = state.replies.get(&key) {
                return if first == method {
                    Ok(reply.clone())
                } else {
                    Err(BackendError::Permanent(format!(
                        "idempotency key {key} was already used for {first}, not {method}"
                    )))
                };
            }
            let given = state.transient_given.entry(call.resource.id).or_default();
            if *given < options.transient_failures {
                *given += 1;
                return Err(BackendError::Transient(format!(
                    "Simulated transient failure ({given} of {})",
                    options.transient_failures
                )));
            }
        }
        if options.fail_on.as_deref() == Some(method) {
            let message = options
                .message
                .unwrap_or_else(|| format!("Simulated failure in {method}"));
            return Err(BackendError::Permanent(message));
        }

        let at = now + self.config.transition_delay;
        let reply = match op {
            Op::Create => state.create(kind, call, options.runtime_error, at, &self.config)?,
            Op::Delete => state.delete(kind, call, at),
            Op::Update => state.update(kind, call)?,
            Op::Stop | Op::Start | Op::Restart => state.act(kind, op, call, at)?,
            Op::Resize => {
                let flavor = param(call, method, "flavor", Value::is_string)?;
                let mut reply = state.act(kind, op, call, at)?;
                state.set_attribute(call, "flavor", &flavor, &mut reply);
                reply
            }
            Op::Extend => {
                let size = param(call, method, "size_gb", |v| {
                    v.as_u64().is_some_and(|n| n > 0)
                })?;
                let mut reply = state.act(kind, op, call, at)?;
                state.set_attribute(call, "size_gb", &size, &mut reply);
                reply
            }
            Op::Pull => state.pull(kind, call)?,
            Op::IsDeleted => BackendReply {
                done: Some(state.find(kind, call).is_none()),
                ..BackendReply::default()
            },
        };

        if op.role() == MethodRole::Effect {
            state
                .replies
                .insert(key, (method.to_owned(), reply.clone()));
            *state.effects.entry(key).or_default() += 1;
            state.total_effects += 1;
        }
        Ok(reply)
    }
}

/// `params[name]`, if `valid` accepts it; a bad request is permanent.
fn param(
    call: &BackendCall,
    method: &str,
    name: &str,
    valid: impl Fn(&Value) -> bool,
) -> Result<Value, BackendError> {
    match call.params.get(name) {
        Some(value) if valid(value) => Ok(value.clone()),
        _ => Err(BackendError::Permanent(format!(
            "{method} needs a valid params.{name}, got {}",
            call.params
        ))),
    }
}

/// The tenant an object is counted under; objects without one share the tenant "".
fn tenant_of(attributes: &Value) -> String {
    match attributes.get("tenant") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(tenant)) => tenant.clone(),
        Some(other) => other.to_string(),
    }
}

impl State {
    /// Applies every transition that is due at `now`.
    fn settle(&mut self, now: Instant) {
        self.objects.retain(|_, object| match object.pending {
            Some((next, at)) if now >= at => {
                object.pending = None;
                match next {
                    Next::To(state) => {
                        object.state = state;
                        true
                    }
                    Next::Gone => false,
                }
            }
            _ => true,
        });
    }

    /// The backend id of the call's resource, if it names a live object of `kind`.
    fn find(&self, kind: Kind, call: &BackendCall) -> Option<String> {
        let id = call.resource.backend_id.as_ref()?;
        self.objects
            .get(id)
            .filter(|o| o.kind == kind)
            .map(|_| id.clone())
    }

    /// Like [`State::find`], but a missing object is an error saying which.
    fn require(&mut self, kind: Kind, call: &BackendCall) -> Result<&mut Object, String> {
        let noun = kind.noun();
        let Some(id) = call.resource.backend_id.as_ref() else {
            return Err(format!(
                "{noun} of resource {} has no backend id",
                call.resource.id
            ));
        };
        match self.objects.get_mut(id) {
            Some(object) if object.kind == kind => Ok(object),
            _ => Err(format!("{noun} {id} not found")),
        }
    }

    /// Takes the object's creation out of its tenant's in-flight count, once.
    fn finish_building(&mut self, backend_id: &str) {
        let Some(object) = self.objects.get_mut(backend_id) else {
            return;
        };
        if !std::mem::take(&mut object.building) {
            return;
        }
        if let Some(n) = self.in_flight.get_mut(&object.tenant) {
            *n = n.saturating_sub(1);
        }
    }

    fn create(
        &mut self,
        kind: Kind,
        call: &BackendCall,
        runtime_error: bool,
        at: Instant,
        config: &SimConfig,
    ) -> Result<BackendReply, BackendError> {
        let tenant = tenant_of(&call.resource.attributes);
        let owned = self.objects.values().filter(|o| o.tenant == tenant).count();
        if owned >= config.tenant_capacity {
            return Err(BackendError::Permanent(format!(
                "Quota exceeded: tenant {tenant} already has {owned} objects"
            )));
        }
        let backend_id = format!("sim-{}", Uuid::new_v4().simple());
        let end = if runtime_error {
            kind.erred()
        } else {
            kind.ready()
        };
        let object = Object {
            kind,
            tenant: tenant.clone(),
            attributes: call.resource.attributes.clone(),
            state: kind.building(),
            pending: Some((Next::To(end), at)),
            building: true,
        };
        self.objects.insert(backend_id.clone(), object);
        let in_flight = self.in_flight.entry(tenant.clone()).or_default();
        *in_flight += 1;
        let in_flight = *in_flight;
        let max = self.max_in_flight.entry(tenant).or_default();
        *max = (*max).max(in_flight);
        Ok(BackendReply {
            backend_id: Some(backend_id),
            runtime_state: Some(kind.building().to_owned()),
            ..BackendReply::default()
        })
    }

    /// Deleting what is not there succeeds: the caller wants it gone, and it is.
    fn delete(&mut self, kind: Kind, call: &BackendCall, at: Instant) -> BackendReply {
        let Some(backend_id) = self.find(kind, call) else {
            return BackendReply::default();
        };
        self.finish_building(&backend_id);
        if let Some(object) = self.objects.get_mut(&backend_id) {
            // A second delete leaves the first one's timer alone.
            if object.state != kind.deleting() {
                object.state = kind.deleting();
                object.pending = Some((Next::Gone, at));
            }
        }
        BackendReply {
            runtime_state: Some(kind.deleting().to_owned()),
            ..BackendReply::default()
        }
    }

    /// Changes only the stored attributes: an update has no runtime effect.
    fn update(&mut self, kind: Kind, call: &BackendCall) -> Result<BackendReply, BackendError> {
        let object = self.require(kind, call).map_err(BackendError::Permanent)?;
        if let (Some(stored), Some(changes)) =
            (object.attributes.as_object_mut(), call.params.as_object())
        {
            stored.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(BackendReply::default())
    }

    /// Runs an action (see [`Op::transition`]). It is refused while another
    /// transition is under way, as a real cloud refuses a busy server.
    fn act(
        &mut self,
        kind: Kind,
        op: Op,
        call: &BackendCall,
        at: Instant,
    ) -> Result<BackendReply, BackendError> {
        let (noun, verb) = (kind.noun(), op.verb());
        let Some((from, during, to)) = op.transition() else {
            return Err(BackendError::Permanent(format!(
                "sim: {verb} is not an action"
            )));
        };
        let object = self.require(kind, call).map_err(BackendError::Permanent)?;
        match object.pending {
            Some((Next::To(next), _)) if object.state == from => {
                return Err(BackendError::Permanent(format!(
                    "Cannot {verb} {noun} in state {from} (changing to {next})"
                )));
            }
            _ if object.state != from => {
                return Err(BackendError::Permanent(format!(
                    "Cannot {verb} {noun} in state {}",
                    object.state
                )));
            }
            _ => {}
        }
        object.state = during;
        object.pending = Some((Next::To(to), at));
        Ok(BackendReply {
            runtime_state: Some(during.to_owned()),
            ..BackendReply::default()
        })
    }

    /// Records `name = value` on the object and in the reply, to be merged into the resource.
    fn set_attribute(
        &mut self,
        call: &BackendCall,
        name: &str,
        value: &Value,
        reply: &mut BackendReply,
    ) {
        let stored = call
            .resource
            .backend_id
            .as_ref()
            .and_then(|id| self.objects.get_mut(id))
            .and_then(|o| o.attributes.as_object_mut());
        if let Some(stored) = stored {
            stored.insert(name.to_owned(), value.clone());
        }
        reply
            .attributes
            .get_or_insert_with(Map::new)
            .insert(name.to_owned(), value.clone());
    }

    fn pull(&mut self, kind: Kind, call: &BackendCall) -> Result<BackendReply, BackendError> {
        let object = self.require(kind, call).map_err(BackendError::NotFound)?;
        let state = object.state;
        if state != kind.building()
            && let Some(id) = call.resource.backend_id.as_deref()
        {
            self.finish_building(id);
        }
        Ok(BackendReply {
            runtime_state: Some(state.to_owned()),
            ..BackendReply::default()
        })
    }
}

#[async_trait]
impl Backend for Sim {
    fn methods(&self) -> &'static [MethodInfo] {
        METHODS
    }

    fn runtime_states(&self) -> &'static [&'static str] {
        RUNTIME_STATES
    }

    async fn call(&self, method: &str, call: BackendCall) -> Result<BackendReply, BackendError> {
        // Counted on arrival, so a call abandoned during the latency counts too.
        *self.lock().calls.entry(method.to_owned()).or_default() += 1;
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        self.call_now(method, &call)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ResourceView;
    use super::*;
    use serde_json::json;

    fn resource(attributes: Value) -> ResourceView {
        ResourceView {
            id: Uuid::now_v7(),
            kind: "server".to_owned(),
            name: "web-1".to_owned(),
            backend_id: None,
            runtime_state: None,
            attributes,
        }
    }

    fn call_on(resource: &ResourceView, params: Value) -> BackendCall {
        BackendCall {
            idempotency_key: Uuid::now_v7(),
            resource: resource.clone(),
            params,
        }
    }

    /// Calls `method` with a fresh key and merges the reply into `resource`,
    /// as the executor would.
    async fn step(
        sim: &Sim,
        method: &str,
        resource: &mut ResourceView,
        params: Value,
    ) -> Result<BackendReply, BackendError> {
        let reply = sim.call(method, call_on(resource, params)).await?;
        if let Some(id) = &reply.backend_id {
            resource.backend_id = Some(id.clone());
        }
        if let Some(state) = &reply.runtime_state {
            resource.runtime_state = Some(state.clone());
        }
        Ok(reply)
    }

    async fn pull(sim: &Sim, method: &str, resource: &ResourceView) -> String {
        let reply = sim
            .call(method, call_on(resource, json!({})))
            .await
            .unwrap();
        reply.runtime_state.unwrap()
    }

    /// An instance that has finished building (instant config).
    async fn active_instance(sim: &Sim, attributes: Value) -> ResourceView {
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
            let (_, op) = Op::parse(info.name).unwrap();
            assert_eq!(op.role(), info.role, "{}", info.name);
        }
        let sim = Sim::new(SimConfig::default());
        assert_eq!(sim.runtime_states().len(), 12);
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

    #[tokio::test]
    async fn instant_config_shows_the_move_on_the_next_call() {
        let sim = Sim::new(SimConfig::instant());
        let mut r = resource(json!({}));
        step(&sim, "create_volume", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(&sim, "pull_volume", &r).await, "available");
        let reply = step(&sim, "extend_volume", &mut r, json!({"size_gb": 20}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("extending"));
        assert_eq!(reply.attributes.unwrap()["size_gb"], json!(20));
        assert_eq!(pull(&sim, "pull_volume", &r).await, "available");
        // Volumes are not instances.
        let err = sim
            .call("pull_instance", call_on(&r, json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn runtime_error_ends_the_build_in_error() {
        let sim = Sim::new(SimConfig::instant());
        let mut r = resource(json!({"sim": {"runtime_error": true}}));
        step(&sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(&sim, "pull_instance", &r).await, "ERROR");
        let mut v = resource(json!({"sim": {"runtime_error": true}}));
        step(&sim, "create_volume", &mut v, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(&sim, "pull_volume", &v).await, "error");
    }

    #[tokio::test]
    async fn fail_on_fails_permanently_with_the_message() {
        let sim = Sim::new(SimConfig::instant());
        let mut r = resource(json!({
            "sim": {"fail_on": "create_instance", "message": "No valid host was found"}
        }));
        let err = step(&sim, "create_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("No valid host was found".to_owned())
        );
        assert_eq!(sim.object_count(), 0);
        assert_eq!(sim.total_effects(), 0);
        assert_eq!(sim.calls("create_instance"), 1);

        let mut r = active_instance(&sim, json!({"sim": {"fail_on": "stop_instance"}})).await;
        let err = step(&sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Simulated failure in stop_instance".to_owned())
        );
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
        sim.lock().settle(Instant::now() + Duration::from_secs(61));
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

    #[tokio::test]
    async fn stop_requires_active_and_start_requires_shutoff() {
        let sim = Sim::new(SimConfig::instant());
        let mut r = active_instance(&sim, json!({})).await;
        let err = step(&sim, "start_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Cannot start instance in state ACTIVE".to_owned())
        );
        let reply = step(&sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("ACTIVE"));
        assert_eq!(pull(&sim, "pull_instance", &r).await, "SHUTOFF");
        let err = step(&sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("Cannot stop instance in state SHUTOFF".to_owned())
        );
        step(&sim, "start_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(pull(&sim, "pull_instance", &r).await, "ACTIVE");
        let reply = step(&sim, "restart_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("REBOOT"));
        assert_eq!(pull(&sim, "pull_instance", &r).await, "ACTIVE");

        let mut ghost = resource(json!({}));
        ghost.backend_id = Some("sim-nope".to_owned());
        let err = step(&sim, "stop_instance", &mut ghost, json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            BackendError::Permanent("instance sim-nope not found".to_owned())
        );
        let err = step(&sim, "update_instance", &mut ghost, json!({}))
            .await
            .unwrap_err();
        assert!(matches!(err, BackendError::Permanent(_)), "{err:?}");
    }

    #[tokio::test]
    async fn resize_returns_the_flavor() {
        let sim = Sim::new(SimConfig::instant());
        let mut r = active_instance(&sim, json!({"flavor": "m1.small"})).await;
        let err = step(
            &sim,
            "resize_instance",
            &mut r,
            json!({"flavor": "m1.large"}),
        )
        .await;
        assert!(matches!(err, Err(BackendError::Permanent(_))), "{err:?}");
        step(&sim, "stop_instance", &mut r, json!({}))
            .await
            .unwrap();
        let err = step(&sim, "resize_instance", &mut r, json!({})).await;
        assert!(matches!(err, Err(BackendError::Permanent(_))), "{err:?}");
        let reply = step(
            &sim,
            "resize_instance",
            &mut r,
            json!({"flavor": "m1.large"}),
        )
        .await
        .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("RESIZE"));
        let mut expected = Map::new();
        expected.insert("flavor".to_owned(), json!("m1.large"));
        assert_eq!(reply.attributes, Some(expected));
        assert_eq!(pull(&sim, "pull_instance", &r).await, "SHUTOFF");
        let reply = step(&sim, "update_instance", &mut r, json!({"name": "web-2"}))
            .await
            .unwrap();
        assert_eq!(reply, BackendReply::default());
    }

    #[tokio::test]
    async fn deletes_succeed_even_for_unknown_objects() {
        let sim = Sim::new(SimConfig::instant());
        let mut ghost = resource(json!({}));
        ghost.backend_id = Some("sim-unknown".to_owned());
        let reply = step(&sim, "delete_instance", &mut ghost, json!({}))
            .await
            .unwrap();
        assert_eq!(reply, BackendReply::default());
        let reply = sim
            .call("is_instance_deleted", call_on(&ghost, json!({})))
            .await
            .unwrap();
        assert_eq!(reply.done, Some(true));

        let mut r = active_instance(&sim, json!({})).await;
        let reply = step(&sim, "delete_instance", &mut r, json!({}))
            .await
            .unwrap();
        assert_eq!(reply.runtime_state.as_deref(), Some("DELETING"));
        assert_eq!(sim.object_count(), 0);
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
