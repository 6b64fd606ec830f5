//! The in-process store: the simulated cloud in this process's memory,
//! shaped like the shared store's tables.

use std::collections::{BTreeMap, HashMap};

use tokio::time::Instant;
use uuid::Uuid;

use super::SimConfig;
use super::SimStats;
use super::model::{Kind, Loaded, Object, ObjectWrite, Outcome, Plan, TenantLoad, decide, listed};
use crate::backend::{BackendCall, BackendReply, ListedObject};

/// The first successful effect under an idempotency key.
#[derive(Debug)]
struct Effect {
    method: String,
    reply: BackendReply,
    /// How many times it was applied: more than 1 is an idempotency violation.
    applied: u32,
}

/// Everything the simulated cloud holds; callers keep it behind a mutex, so
/// each call is atomic.
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Live objects by backend id.
    objects: HashMap<String, Object<Instant>>,
    effects: HashMap<Uuid, Effect>,
    /// Injected transient failures already given, by resource id.
    transient: HashMap<Uuid, u32>,
    /// The most creations each tenant had in flight at once.
    max_in_flight: HashMap<String, usize>,
}

impl Memory {
    /// Runs one call now.
    pub(super) fn call(
        &mut self,
        config: &SimConfig,
        plan: &Plan<'_>,
        call: &BackendCall,
    ) -> Outcome<Instant> {
        let now = Instant::now();
        self.settle(now);
        let key = call.idempotency_key;
        let loaded = Loaded {
            now,
            at: now + config.transition_delay,
            prior: plan
                .effect
                .then(|| self.effects.get(&key))
                .flatten()
                .map(|e| (e.method.clone(), e.reply.clone())),
            transient_given: if plan.transient {
                self.transient.get(&call.resource.id).copied().unwrap_or(0)
            } else {
                0
            },
            object: plan.object_id.and_then(|id| self.objects.get(id).cloned()),
            tenant: plan
                .create_tenant
                .as_deref()
                .map(|tenant| self.tenant(tenant))
                .unwrap_or_default(),
            parent: plan.parent_id.and_then(|id| self.objects.get(id).cloned()),
            attached: match plan.object_id {
                Some(id) if plan.attachments => self.attached_to(id),
                _ => Vec::new(),
            },
        };
        let outcome = decide(config, plan, call, loaded);
        self.write(call, &outcome);
        outcome
    }

    fn write(&mut self, call: &BackendCall, outcome: &Outcome<Instant>) {
        if let Some(given) = outcome.transient_given {
            self.transient.insert(call.resource.id, given);
        }
        match &outcome.object {
            ObjectWrite::Keep => {}
            ObjectWrite::Put(id, object) => {
                self.objects.insert(id.clone(), object.clone());
            }
            ObjectWrite::Remove(id) => {
                self.objects.remove(id);
            }
        }
        if let Some((method, reply)) = &outcome.effect {
            self.effects
                .entry(call.idempotency_key)
                .and_modify(|e| e.applied += 1)
                .or_insert_with(|| Effect {
                    method: method.clone(),
                    reply: reply.clone(),
                    applied: 1,
                });
        }
        if let Some(created) = &outcome.created {
            let max = self
                .max_in_flight
                .entry(created.tenant.clone())
                .or_default();
            *max = (*max).max(created.in_flight);
        }
    }

    /// The live objects of the kind called `noun`, with what a pull reports.
    pub(super) fn list(&mut self, now: Instant, noun: &str) -> Vec<ListedObject> {
        self.settle(now);
        let mut listed: Vec<ListedObject> = self
            .objects
            .iter()
            .filter(|(_, o)| o.kind.noun() == noun)
            .map(|(id, o)| listed(id, o))
            .collect();
        listed.sort_by(|a, b| a.backend_id.cmp(&b.backend_id));
        listed
    }

    /// Changes an object behind everyone's back: its runtime state, and
    /// attributes merged in. `false` if there is no such object.
    pub(super) fn tamper(
        &mut self,
        now: Instant,
        backend_id: &str,
        state: Option<&'static str>,
        attributes: &serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        self.settle(now);
        let Some(object) = self.objects.get_mut(backend_id) else {
            return false;
        };
        if let Some(state) = state {
            object.state = state;
            object.pending = None;
        }
        if let Some(stored) = object.attributes.as_object_mut() {
            stored.extend(attributes.clone());
        }
        true
    }

    /// Removes an object behind everyone's back; `false` if there was none.
    pub(super) fn vanish(&mut self, backend_id: &str) -> bool {
        self.objects.remove(backend_id).is_some()
    }

    /// Applies every transition that is due at `now`.
    pub(super) fn settle(&mut self, now: Instant) {
        self.objects.retain(|_, object| object.settle(now));
    }

    /// The objects attached to `instance`, by backend id (sorted, for stable messages).
    fn attached_to(&self, instance: &str) -> Vec<(String, Kind)> {
        let mut attached: Vec<(String, Kind)> = self
            .objects
            .iter()
            .filter(|(_, o)| o.attached_to.as_deref() == Some(instance))
            .map(|(id, o)| (id.clone(), o.kind))
            .collect();
        attached.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        attached
    }

    fn tenant(&self, tenant: &str) -> TenantLoad {
        let mut load = TenantLoad::default();
        for object in self.objects.values().filter(|o| o.tenant == tenant) {
            load.owned += 1;
            load.in_flight += usize::from(object.building);
        }
        load
    }

    /// Creations of `tenant` in flight now.
    pub(super) fn in_flight(&self, tenant: &str) -> usize {
        self.tenant(tenant).in_flight
    }

    /// Live objects at `now`.
    pub(super) fn object_count(&mut self, now: Instant) -> usize {
        self.settle(now);
        self.objects.len()
    }

    /// Everything the store counts, at `now`.
    pub(super) fn stats(&mut self, now: Instant) -> SimStats {
        self.settle(now);
        let mut in_flight: HashMap<String, usize> = HashMap::new();
        for object in self.objects.values().filter(|o| o.building) {
            *in_flight.entry(object.tenant.clone()).or_default() += 1;
        }
        let mut objects_by_kind: BTreeMap<String, usize> = BTreeMap::new();
        for object in self.objects.values() {
            *objects_by_kind
                .entry(object.kind.noun().to_owned())
                .or_default() += 1;
        }
        SimStats {
            objects: self.objects.len(),
            objects_by_kind,
            total_effects: self.effects.values().map(|e| u64::from(e.applied)).sum(),
            effects: self.effects.iter().map(|(k, e)| (*k, e.applied)).collect(),
            in_flight,
            max_in_flight: self.max_in_flight.clone(),
        }
    }
}
