//! Where decisions become durable. Today a single node: [`Consensus::propose`] applies the command
//! to the state machine and flushes sled before it answers. The replicated log takes this place
//! later: proposing appends to the Raft log, and the state machine applies committed entries in
//! order; callers do not change.

use tokio::sync::Mutex;

use crate::state::{Applied, Command, Machine, Rejection};
use crate::store::{Store, StoreError};

/// The door every decision goes through.
pub struct Consensus {
    machine: Mutex<Machine>,
    store: Store,
}

impl Consensus {
    /// A single-node log over `store`.
    pub fn new(store: Store) -> Self {
        Self { machine: Mutex::new(Machine::new(store.clone())), store }
    }

    /// Applies `cmd` and returns once its effects are on disk. Commands are applied one at a
    /// time, in the order they are proposed.
    pub async fn propose(&self, cmd: Command) -> Result<Result<Applied, Rejection>, StoreError> {
        let mut machine = self.machine.lock().await;
        let out = machine.apply(&cmd)?;
        self.store.flush().await?;
        Ok(out)
    }

    /// The applied state, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }
}
