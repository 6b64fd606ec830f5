//! The simulation's rules, whatever store holds its state.
//!
//! A call runs in three parts: the store loads what the call may need
//! ([`Loaded`], under whatever locks make the call atomic), [`decide`] applies
//! the rules to it (pure: no I/O, no clock), and the store writes back what
//! [`Outcome`] says changed. The in-memory and the PostgreSQL store differ
//! only in how they load and write; the time type `T` is theirs too
//! (`tokio::time::Instant` in memory, the database's `timestamptz` when shared).

use serde_json::{Map, Value};
use uuid::Uuid;

use super::SimConfig;
use crate::backend::{
    BackendCall, BackendError, BackendReply, MethodInfo, MethodRole, ResourceView,
};

/// The methods the simulator offers; roles follow [`Op::role`].
pub(super) static METHODS: &[MethodInfo] = &[
    method("create_instance", MethodRole::Effect),
    method("delete_instance", MethodRole::Effect),
    method("stop_instance", MethodRole::Effect),
    method("start_instance", MethodRole::Effect),
    method("restart_instance", MethodRole::Effect),
    method("resize_instance", MethodRole::Effect),
    method("update_instance", MethodRole::Effect),
    method("pull_instance", MethodRole::Pull),
    method("is_instance_deleted", MethodRole::Check),
    method("list_instances", MethodRole::List),
    method("create_volume", MethodRole::Effect),
    method("extend_volume", MethodRole::Effect),
    method("update_volume", MethodRole::Effect),
    method("delete_volume", MethodRole::Effect),
    method("pull_volume", MethodRole::Pull),
    method("is_volume_deleted", MethodRole::Check),
    method("attach_volume", MethodRole::Effect),
    method("detach_volume", MethodRole::Effect),
    method("set_security_groups", MethodRole::Effect),
    method("create_port", MethodRole::Effect),
    method("delete_port", MethodRole::Effect),
    method("pull_port", MethodRole::Pull),
    method("is_port_deleted", MethodRole::Check),
    method("create_floating_ip", MethodRole::Effect),
    method("delete_floating_ip", MethodRole::Effect),
    method("attach_floating_ip", MethodRole::Effect),
    method("detach_floating_ip", MethodRole::Effect),
    method("pull_floating_ip", MethodRole::Pull),
    method("is_floating_ip_deleted", MethodRole::Check),
    method("list_volumes", MethodRole::List),
];

const fn method(name: &'static str, role: MethodRole) -> MethodInfo {
    MethodInfo {
        name: std::borrow::Cow::Borrowed(name),
        role,
    }
}

/// Every runtime state an object can be in (the migration's CHECK lists them too).
pub(super) static RUNTIME_STATES: &[&str] = &[
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
    "in-use",
    "DOWN",
];

/// A volume attached to an instance (Cinder's name).
const IN_USE: &str = "in-use";

/// `name` as one of [`RUNTIME_STATES`], if it is one.
pub(super) fn runtime_state(name: &str) -> Option<&'static str> {
    RUNTIME_STATES.iter().copied().find(|s| *s == name)
}

/// The kinds of object the simulator holds, with their state names
/// (instances use Nova's, volumes Cinder's, ports and floating IPs Neutron's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Instance,
    Volume,
    Port,
    FloatingIp,
}

impl Kind {
    /// The name in messages and in the store.
    pub(super) fn noun(self) -> &'static str {
        match self {
            Kind::Instance => "instance",
            Kind::Volume => "volume",
            Kind::Port => "port",
            Kind::FloatingIp => "floating_ip",
        }
    }

    /// The name in prose ("floating IP", not "floating_ip").
    pub(super) fn label(self) -> &'static str {
        match self {
            Kind::FloatingIp => "floating IP",
            other => other.noun(),
        }
    }

    /// The kind whose [`Kind::noun`] is `noun`.
    pub(super) fn from_noun(noun: &str) -> Option<Self> {
        match noun {
            "instance" => Some(Kind::Instance),
            "volume" => Some(Kind::Volume),
            "port" => Some(Kind::Port),
            "floating_ip" => Some(Kind::FloatingIp),
            _ => None,
        }
    }

    fn building(self) -> &'static str {
        match self {
            Kind::Instance => "BUILD",
            Kind::Volume => "creating",
            Kind::Port | Kind::FloatingIp => "DOWN",
        }
    }

    fn ready(self) -> &'static str {
        match self {
            Kind::Instance | Kind::Port | Kind::FloatingIp => "ACTIVE",
            Kind::Volume => "available",
        }
    }

    fn erred(self) -> &'static str {
        match self {
            Kind::Instance | Kind::Port | Kind::FloatingIp => "ERROR",
            Kind::Volume => "error",
        }
    }

    fn deleting(self) -> &'static str {
        match self {
            Kind::Instance | Kind::Port | Kind::FloatingIp => "DELETING",
            Kind::Volume => "deleting",
        }
    }
}

/// What a method does, independent of the kind it acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Create,
    Delete,
    Update,
    Stop,
    Start,
    Restart,
    Resize,
    Extend,
    /// Attaches the object to its parent instance (volumes, floating IPs).
    Attach,
    /// Detaches the object from its parent instance.
    Detach,
    SetSecurityGroups,
    Pull,
    IsDeleted,
    /// Lists the kind's objects: through [`crate::backend::Backend::list`] only.
    List,
}

impl Op {
    pub(super) fn parse(method: &str) -> Option<(Kind, Op)> {
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
            "attach_volume" => (Kind::Volume, Op::Attach),
            "detach_volume" => (Kind::Volume, Op::Detach),
            "set_security_groups" => (Kind::Instance, Op::SetSecurityGroups),
            "create_port" => (Kind::Port, Op::Create),
            "delete_port" => (Kind::Port, Op::Delete),
            "pull_port" => (Kind::Port, Op::Pull),
            "is_port_deleted" => (Kind::Port, Op::IsDeleted),
            "create_floating_ip" => (Kind::FloatingIp, Op::Create),
            "delete_floating_ip" => (Kind::FloatingIp, Op::Delete),
            "attach_floating_ip" => (Kind::FloatingIp, Op::Attach),
            "detach_floating_ip" => (Kind::FloatingIp, Op::Detach),
            "pull_floating_ip" => (Kind::FloatingIp, Op::Pull),
            "is_floating_ip_deleted" => (Kind::FloatingIp, Op::IsDeleted),
            "list_instances" => (Kind::Instance, Op::List),
            "list_volumes" => (Kind::Volume, Op::List),
            _ => return None,
        };
        Some(found)
    }

    pub(super) fn role(self) -> MethodRole {
        match self {
            Op::Pull => MethodRole::Pull,
            Op::IsDeleted => MethodRole::Check,
            Op::List => MethodRole::List,
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
            Op::Attach => "attach",
            Op::Detach => "detach",
            Op::SetSecurityGroups => "set the security groups of",
            Op::Pull => "pull",
            Op::IsDeleted => "check",
            Op::List => "list",
        }
    }
}

/// Where a pending transition leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    To(&'static str),
    /// The object disappears (the end of a delete).
    Gone,
}

/// One simulated object; `T` is the store's time.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Object<T> {
    pub(super) kind: Kind,
    pub(super) tenant: String,
    pub(super) attributes: Value,
    pub(super) state: &'static str,
    pub(super) pending: Option<(Next, T)>,
    /// Counted in its tenant's in-flight creations until a pull sees it built (or it is deleted).
    pub(super) building: bool,
    /// The backend id of the instance it is attached to (volumes and floating IPs).
    pub(super) attached_to: Option<String>,
}

impl<T: Copy + PartialOrd> Object<T> {
    /// Applies the pending transition if it is due at `now`; false if the
    /// object is gone.
    pub(super) fn settle(&mut self, now: T) -> bool {
        match self.pending {
            Some((next, at)) if now >= at => {
                self.pending = None;
                match next {
                    Next::To(state) => {
                        self.state = state;
                        true
                    }
                    Next::Gone => false,
                }
            }
            _ => true,
        }
    }
}

/// The failure-injection options read from `attributes.sim`.
#[derive(Debug, Default)]
pub(super) struct Options {
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

/// What a call is and what the store must load (and lock) for it.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    method: &'a str,
    kind: Kind,
    op: Op,
    options: Options,
    /// An effect: replayed per idempotency key, counted, subject to injected
    /// transient failures. The store loads the key's first reply.
    pub(super) effect: bool,
    /// Whether injected transient failures apply: the store loads the
    /// resource's counter.
    pub(super) transient: bool,
    /// The object the call acts on (all but creates): the store loads it.
    pub(super) object_id: Option<&'a str>,
    /// For creates, the tenant the new object counts under: the store loads
    /// the tenant's counts.
    pub(super) create_tenant: Option<String>,
    /// For attaches, the parent instance's backend id: the store loads (and
    /// locks, after the object) that instance.
    pub(super) parent_id: Option<&'a str>,
    /// For instance deletes: the store loads what is attached to the object.
    pub(super) attachments: bool,
}

impl<'a> Plan<'a> {
    /// The plan for `method`, or a permanent error if the sim has no such method.
    pub(super) fn new(method: &'a str, call: &'a BackendCall) -> Result<Self, BackendError> {
        let Some((kind, op)) = Op::parse(method) else {
            return Err(BackendError::Permanent(format!(
                "sim backend has no method {method}"
            )));
        };
        let options = Options::of(&call.resource.attributes);
        let effect = op.role() == MethodRole::Effect;
        let create = op == Op::Create;
        let parent_id = match (op, &call.parent) {
            (Op::Attach, Some(parent)) => parent.backend_id.as_deref(),
            _ => None,
        };
        Ok(Self {
            method,
            kind,
            op,
            effect,
            transient: effect && options.transient_failures > 0,
            object_id: if create {
                None
            } else {
                call.resource.backend_id.as_deref()
            },
            create_tenant: create.then(|| tenant_of(&call.resource.attributes)),
            parent_id,
            attachments: kind == Kind::Instance && op == Op::Delete,
            options,
        })
    }
}

/// A tenant's counts, loaded for creates.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TenantLoad {
    /// Live objects (deleting ones included until gone).
    pub(super) owned: usize,
    /// Objects still counted as in-flight creations.
    pub(super) in_flight: usize,
}

/// What the store loaded for a call, as the [`Plan`] asked.
#[derive(Debug)]
pub(super) struct Loaded<T> {
    /// The store's clock now.
    pub(super) now: T,
    /// `now` plus the transition delay: when a transition started now ends.
    pub(super) at: T,
    /// The method and reply of the key's first successful effect.
    pub(super) prior: Option<(String, BackendReply)>,
    /// Injected transient failures already given for the resource.
    pub(super) transient_given: u32,
    /// [`Plan::object_id`]'s object as stored (not yet settled), if any.
    pub(super) object: Option<Object<T>>,
    /// [`Plan::create_tenant`]'s counts, settled at `now`.
    pub(super) tenant: TenantLoad,
    /// [`Plan::parent_id`]'s object as stored (not yet settled), if any.
    pub(super) parent: Option<Object<T>>,
    /// With [`Plan::attachments`]: the live objects attached to the plan's
    /// object, by backend id.
    pub(super) attached: Vec<(String, Kind)>,
}

/// What to do to the stored object.
#[derive(Debug, PartialEq)]
pub(super) enum ObjectWrite<T> {
    /// Nothing changed.
    Keep,
    /// Store the object under this id (new or changed).
    Put(String, Object<T>),
    /// The object is gone.
    Remove(String),
}

/// A new object's creation, for the in-flight statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Created {
    /// Its tenant.
    pub(super) tenant: String,
    /// The tenant's creations in flight, this one included.
    pub(super) in_flight: usize,
}

/// A call's result and what the store must write, whether the call
/// succeeded or not (settled transitions and given failures stick).
#[derive(Debug)]
pub(super) struct Outcome<T> {
    /// The answer to the caller.
    pub(super) result: Result<BackendReply, BackendError>,
    /// The resource's new count of injected transient failures given.
    pub(super) transient_given: Option<u32>,
    /// The object's change.
    pub(super) object: ObjectWrite<T>,
    /// A newly applied effect: the method and reply to record under the key.
    pub(super) effect: Option<(String, BackendReply)>,
    /// Set when the effect created an object.
    pub(super) created: Option<Created>,
}

/// Applies the rules to one call: see the module docs.
pub(super) fn decide<T: Copy + PartialOrd>(
    config: &SimConfig,
    plan: &Plan<'_>,
    call: &BackendCall,
    loaded: Loaded<T>,
) -> Outcome<T> {
    let Loaded {
        now,
        at,
        prior,
        transient_given,
        object: stored,
        tenant,
        parent,
        attached,
    } = loaded;
    // Objects as they are at `now`; `None` once gone.
    let settle = |object: Option<Object<T>>| object.and_then(|mut o| o.settle(now).then_some(o));
    let object = settle(stored.clone());
    let parent = settle(parent);
    let mut step = Step {
        config,
        plan,
        call,
        at,
        object,
        parent,
        attached,
        created: None,
        transient_given: None,
        fresh: false,
    };
    let result = step.run(prior, transient_given, tenant);

    let Step {
        object,
        created,
        transient_given,
        fresh,
        ..
    } = step;
    let applied = fresh && plan.effect && result.is_ok();
    let (object, created) = match (created, plan.object_id) {
        (Some((id, new, in_flight)), _) => {
            let created = Created {
                tenant: new.tenant.clone(),
                in_flight,
            };
            (ObjectWrite::Put(id, new), applied.then_some(created))
        }
        (None, Some(id)) => match (stored, object) {
            (Some(_), None) => (ObjectWrite::Remove(id.to_owned()), None),
            (Some(before), Some(after)) if before != after => {
                (ObjectWrite::Put(id.to_owned(), after), None)
            }
            _ => (ObjectWrite::Keep, None),
        },
        (None, None) => (ObjectWrite::Keep, None),
    };
    let effect = match (&result, applied) {
        (Ok(reply), true) => Some((plan.method.to_owned(), reply.clone())),
        _ => None,
    };
    Outcome {
        result,
        transient_given,
        object,
        effect,
        created,
    }
}

/// One call being decided.
struct Step<'a, T> {
    config: &'a SimConfig,
    plan: &'a Plan<'a>,
    call: &'a BackendCall,
    at: T,
    /// The plan's object, settled; `None` if there is none (or it is gone).
    object: Option<Object<T>>,
    /// The plan's parent instance, settled; `None` if there is none (or it is gone).
    parent: Option<Object<T>>,
    /// What is attached to the plan's object (loaded for instance deletes).
    attached: Vec<(String, Kind)>,
    /// A created object: its id, itself, and its tenant's creations in flight.
    created: Option<(String, Object<T>, usize)>,
    transient_given: Option<u32>,
    /// Whether the call got past replays and injected failures to the method itself.
    fresh: bool,
}

impl<T: Copy + PartialOrd> Step<'_, T> {
    fn run(
        &mut self,
        prior: Option<(String, BackendReply)>,
        transient_given: u32,
        tenant: TenantLoad,
    ) -> Result<BackendReply, BackendError> {
        let plan = self.plan;
        let (method, options) = (plan.method, &plan.options);
        let key = self.call.idempotency_key;
        if plan.effect {
            if let Some((first, reply)) = prior {
                return if first == method {
                    Ok(reply)
                } else {
                    Err(BackendError::Permanent(format!(
                        "idempotency key {key} was already used for {first}, not {method}"
                    )))
                };
            }
            if transient_given < options.transient_failures {
                let given = transient_given + 1;
                self.transient_given = Some(given);
                return Err(BackendError::Transient(format!(
                    "Simulated transient failure ({given} of {})",
                    options.transient_failures
                )));
            }
        }
        if options.fail_on.as_deref() == Some(method) {
            let message = options
                .message
                .clone()
                .unwrap_or_else(|| format!("Simulated failure in {method}"));
            return Err(BackendError::Permanent(message));
        }

        self.fresh = true;
        match plan.op {
            Op::Create => self.create(tenant),
            Op::Delete => self.delete(),
            Op::Update => self.update(),
            Op::Stop | Op::Start | Op::Restart => self.act(),
            Op::Resize => {
                let flavor = param(self.call, method, "flavor", Value::is_string)?;
                let mut reply = self.act()?;
                self.set_attribute("flavor", &flavor, &mut reply);
                Ok(reply)
            }
            Op::Extend => {
                let size = param(self.call, method, "size_gb", |v| {
                    v.as_u64().is_some_and(|n| n > 0)
                })?;
                let mut reply = self.act()?;
                self.set_attribute("size_gb", &size, &mut reply);
                Ok(reply)
            }
            Op::Attach => self.attach(),
            Op::Detach => self.detach(),
            Op::SetSecurityGroups => self.set_security_groups(),
            Op::Pull => self.pull(),
            Op::List => Err(BackendError::Permanent(format!(
                "`{method}` lists objects: it is not called on one"
            ))),
            Op::IsDeleted => Ok(BackendReply {
                done: Some(self.found().is_none()),
                ..BackendReply::default()
            }),
        }
    }

    /// The plan's object, if it is live and of the plan's kind.
    fn found(&mut self) -> Option<&mut Object<T>> {
        let kind = self.plan.kind;
        self.object.as_mut().filter(|o| o.kind == kind)
    }

    /// Like [`Step::found`], but a missing object is an error saying which.
    fn require(&mut self) -> Result<&mut Object<T>, String> {
        let noun = self.plan.kind.noun();
        let resource = &self.call.resource;
        let Some(id) = resource.backend_id.as_deref() else {
            return Err(format!(
                "{noun} of resource {} has no backend id",
                resource.id
            ));
        };
        let missing = format!("{noun} {id} not found");
        self.found().ok_or(missing)
    }

    fn create(&mut self, tenant: TenantLoad) -> Result<BackendReply, BackendError> {
        let kind = self.plan.kind;
        let name = self.plan.create_tenant.clone().unwrap_or_default();
        if tenant.owned >= self.config.tenant_capacity {
            return Err(BackendError::Permanent(format!(
                "Quota exceeded: tenant {name} already has {} objects",
                tenant.owned
            )));
        }
        let mut status = Map::new();
        if kind == Kind::Port {
            let groups = security_groups(self.plan.method, &self.call.resource.attributes)?;
            status.insert(
                "security_groups".to_owned(),
                groups.unwrap_or_else(no_groups),
            );
        }
        let backend_id = format!("sim-{}", Uuid::new_v4().simple());
        if kind == Kind::FloatingIp {
            status.insert("address".to_owned(), floating_address(&backend_id).into());
        }
        let end = if self.plan.options.runtime_error {
            kind.erred()
        } else {
            kind.ready()
        };
        let object = Object {
            kind,
            tenant: name,
            attributes: self.call.resource.attributes.clone(),
            state: kind.building(),
            pending: Some((Next::To(end), self.at)),
            building: true,
            attached_to: None,
        };
        self.created = Some((backend_id.clone(), object, tenant.in_flight + 1));
        Ok(BackendReply {
            backend_id: Some(backend_id),
            runtime_state: Some(kind.building().to_owned()),
            status: (!status.is_empty()).then_some(status),
            ..BackendReply::default()
        })
    }

    /// Deleting what is not there succeeds: the caller wants it gone, and it
    /// is. Deleting what is attached, or an instance something is attached
    /// to, is refused: the caller must detach first.
    fn delete(&mut self) -> Result<BackendReply, BackendError> {
        let (kind, at) = (self.plan.kind, self.at);
        let id = self.plan.object_id.unwrap_or_default();
        let attached = std::mem::take(&mut self.attached);
        let Some(object) = self.found() else {
            return Ok(BackendReply::default());
        };
        if let Some(server) = &object.attached_to {
            let label = kind.label();
            return Err(BackendError::Permanent(format!(
                "Cannot delete {label} {id}: {label} is in use (attached to instance {server})"
            )));
        }
        if !attached.is_empty() {
            let list = |of: Kind| -> Option<String> {
                let ids: Vec<&str> = attached
                    .iter()
                    .filter(|(_, k)| *k == of)
                    .map(|(id, _)| id.as_str())
                    .collect();
                (!ids.is_empty()).then(|| format!("{}s ({})", of.label(), ids.join(", ")))
            };
            let what: Vec<String> = [Kind::Volume, Kind::FloatingIp]
                .into_iter()
                .filter_map(list)
                .collect();
            return Err(BackendError::Permanent(format!(
                "Cannot delete instance {id}: instance has attached {}",
                what.join(" and ")
            )));
        }
        object.building = false;
        // A second delete leaves the first one's timer alone.
        if object.state != kind.deleting() {
            object.state = kind.deleting();
            object.pending = Some((Next::Gone, at));
        }
        Ok(BackendReply {
            runtime_state: Some(kind.deleting().to_owned()),
            ..BackendReply::default()
        })
    }

    /// The parent the call names, or why there is none.
    fn parent_view(&self) -> Result<&ResourceView, BackendError> {
        let (method, resource) = (self.plan.method, &self.call.resource);
        self.call.parent.as_ref().ok_or_else(|| {
            BackendError::Permanent(format!(
                "{method} needs the server to act on, but resource {} has no parent",
                resource.id
            ))
        })
    }

    /// Attaches the object to its parent instance: a volume becomes
    /// `in-use`; a floating IP stays `ACTIVE`. Attaching again to the same
    /// instance changes nothing.
    fn attach(&mut self) -> Result<BackendReply, BackendError> {
        let kind = self.plan.kind;
        let label = kind.label();
        let parent = self.parent_view()?;
        // What is wrong with the parent instance, once the object is known to exist.
        let server = match (&parent.backend_id, &self.parent) {
            (None, _) => Err(format!(
                "Cannot attach {label}: its server (resource {}) has no backend id",
                parent.id
            )),
            (Some(server), Some(instance)) if instance.kind == Kind::Instance => {
                if instance.state == Kind::Instance.deleting() {
                    Err(format!(
                        "Cannot attach {label} to instance {server} in state {}",
                        instance.state
                    ))
                } else {
                    Ok(server.clone())
                }
            }
            (Some(server), _) => Err(format!("instance {server} not found")),
        };
        let id = self.plan.object_id.unwrap_or_default();
        let object = self.require().map_err(BackendError::NotFound)?;
        let server = server.map_err(BackendError::Permanent)?;
        match &object.attached_to {
            Some(other) if *other != server => {
                return Err(BackendError::Permanent(format!(
                    "Cannot attach {label} {id} to instance {server}: \
                     it is attached to instance {other}"
                )));
            }
            Some(_) => {}
            None if object.state != kind.ready() => {
                return Err(BackendError::Permanent(format!(
                    "Cannot attach {label} {id} in state {}",
                    object.state
                )));
            }
            None => {
                object.attached_to = Some(server.clone());
                if kind == Kind::Volume {
                    object.state = IN_USE;
                }
            }
        }
        let mut status = Map::new();
        status.insert("attached_to".to_owned(), Value::from(server));
        Ok(BackendReply {
            runtime_state: Some(object.state.to_owned()),
            status: Some(status),
            ..BackendReply::default()
        })
    }

    /// Detaches the object from its parent instance; what is not attached
    /// (or not there) is detached already. Detaching from another instance
    /// than the one it is attached to is refused.
    fn detach(&mut self) -> Result<BackendReply, BackendError> {
        let kind = self.plan.kind;
        let label = kind.label();
        let server = self.parent_view()?.backend_id.clone();
        let id = self.plan.object_id.unwrap_or_default();
        let mut status = Map::new();
        status.insert("attached_to".to_owned(), Value::Null);
        let Some(object) = self.found() else {
            return Ok(BackendReply {
                status: Some(status),
                ..BackendReply::default()
            });
        };
        if let Some(other) = &object.attached_to {
            if server.as_ref() != Some(other) {
                let from = server.as_deref().unwrap_or("(no backend id)");
                return Err(BackendError::Permanent(format!(
                    "Cannot detach {label} {id} from instance {from}: \
                     it is attached to instance {other}"
                )));
            }
            object.attached_to = None;
            if kind == Kind::Volume {
                object.state = kind.ready();
            }
        }
        Ok(BackendReply {
            runtime_state: Some(object.state.to_owned()),
            status: Some(status),
            ..BackendReply::default()
        })
    }

    /// Sets an instance's security groups to `params.security_groups`, or
    /// else `attributes.security_groups`, or else none.
    fn set_security_groups(&mut self) -> Result<BackendReply, BackendError> {
        let (call, method) = (self.call, self.plan.method);
        let groups = match security_groups(method, &call.params)? {
            Some(groups) => groups,
            None => security_groups(method, &call.resource.attributes)?.unwrap_or_else(no_groups),
        };
        let (noun, verb) = (self.plan.kind.noun(), self.plan.op.verb());
        let deleting = self.plan.kind.deleting();
        let object = self.require().map_err(BackendError::Permanent)?;
        if object.state == deleting {
            return Err(BackendError::Permanent(format!(
                "Cannot {verb} {noun} in state {deleting}"
            )));
        }
        let mut reply = BackendReply::default();
        self.set_attribute("security_groups", &groups, &mut reply);
        Ok(reply)
    }

    /// Changes only the stored attributes: an update has no runtime effect.
    fn update(&mut self) -> Result<BackendReply, BackendError> {
        let params = &self.call.params;
        let object = self.require().map_err(BackendError::Permanent)?;
        if let (Some(stored), Some(changes)) =
            (object.attributes.as_object_mut(), params.as_object())
        {
            stored.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Ok(BackendReply::default())
    }

    /// Runs an action (see [`Op::transition`]). It is refused while another
    /// transition is under way, as a real cloud refuses a busy server.
    fn act(&mut self) -> Result<BackendReply, BackendError> {
        let (op, at) = (self.plan.op, self.at);
        let (noun, verb) = (self.plan.kind.noun(), op.verb());
        let Some((from, during, to)) = op.transition() else {
            return Err(BackendError::Permanent(format!(
                "sim: {verb} is not an action"
            )));
        };
        let object = self.require().map_err(BackendError::Permanent)?;
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

    /// Records `name = value` on the object and in the reply, to be merged into the resource's status.
    fn set_attribute(&mut self, name: &str, value: &Value, reply: &mut BackendReply) {
        if let Some(stored) = self
            .object
            .as_mut()
            .and_then(|o| o.attributes.as_object_mut())
        {
            stored.insert(name.to_owned(), value.clone());
        }
        reply
            .status
            .get_or_insert_with(Map::new)
            .insert(name.to_owned(), value.clone());
    }

    /// The object's runtime state; for a floating IP, its address and
    /// attachment too.
    fn pull(&mut self) -> Result<BackendReply, BackendError> {
        let kind = self.plan.kind;
        let id = self.plan.object_id.unwrap_or_default();
        let object = self.require().map_err(BackendError::NotFound)?;
        if object.state != kind.building() {
            object.building = false;
        }
        let status = (kind == Kind::FloatingIp).then(|| {
            let mut status = Map::new();
            status.insert("address".to_owned(), floating_address(id).into());
            let attached = object.attached_to.clone().map_or(Value::Null, Value::from);
            status.insert("attached_to".to_owned(), attached);
            status
        });
        Ok(BackendReply {
            runtime_state: Some(object.state.to_owned()),
            status: status.or_else(|| reported(object)),
            ..BackendReply::default()
        })
    }
}

/// What a pull reports about an object besides its runtime state: its size
/// (an instance's `flavor`, a volume's `size_gb`), when it has one.
pub(super) fn reported<T>(object: &Object<T>) -> Option<Map<String, Value>> {
    let key = match object.kind {
        Kind::Instance => "flavor",
        Kind::Volume => "size_gb",
        Kind::Port | Kind::FloatingIp => return None,
    };
    let value = object.attributes.get(key)?;
    Some(Map::from_iter([(key.to_owned(), value.clone())]))
}

/// An object as a list method reports it.
pub(super) fn listed<T>(backend_id: &str, object: &Object<T>) -> crate::backend::ListedObject {
    crate::backend::ListedObject {
        backend_id: backend_id.to_owned(),
        name: object
            .attributes
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned),
        runtime_state: Some(object.state.to_owned()),
        status: reported(object),
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

/// `holder.security_groups` (params or attributes), if set: an array of
/// strings, else a permanent error.
fn security_groups(method: &str, holder: &Value) -> Result<Option<Value>, BackendError> {
    match holder.get("security_groups") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(groups)) if groups.iter().all(Value::is_string) => {
            Ok(Some(Value::Array(groups.clone())))
        }
        Some(other) => Err(BackendError::Permanent(format!(
            "{method}: security_groups must be an array of strings, got {other}"
        ))),
    }
}

/// No security groups.
fn no_groups() -> Value {
    Value::Array(Vec::new())
}

/// A floating IP's address, derived from its backend id: one of
/// 203.0.113.1 to 203.0.113.254 (TEST-NET-3), so two may share one.
pub(super) fn floating_address(backend_id: &str) -> String {
    let hash = backend_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!("203.0.113.{}", hash % 254 + 1)
}

/// The tenant an object is counted under; objects without one share the tenant "".
pub(super) fn tenant_of(attributes: &Value) -> String {
    match attributes.get("tenant") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(tenant)) => tenant.clone(),
        Some(other) => other.to_string(),
    }
}

/// A reply as stored in `sim_effects.reply`.
pub(super) fn reply_to_json(reply: &BackendReply) -> Value {
    let mut stored = Map::new();
    if let Some(id) = &reply.backend_id {
        stored.insert("backend_id".to_owned(), Value::from(id.as_str()));
    }
    if let Some(state) = &reply.runtime_state {
        stored.insert("runtime_state".to_owned(), Value::from(state.as_str()));
    }
    if let Some(status) = &reply.status {
        stored.insert("status".to_owned(), Value::Object(status.clone()));
    }
    if let Some(done) = reply.done {
        stored.insert("done".to_owned(), Value::Bool(done));
    }
    Value::Object(stored)
}

/// The reply [`reply_to_json`] stored.
pub(super) fn reply_from_json(stored: &Value) -> BackendReply {
    let text = |name: &str| stored.get(name).and_then(Value::as_str).map(str::to_owned);
    BackendReply {
        backend_id: text("backend_id"),
        runtime_state: text("runtime_state"),
        status: stored.get("status").and_then(Value::as_object).cloned(),
        done: stored.get("done").and_then(Value::as_bool),
    }
}
