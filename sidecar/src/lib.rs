//! The loopmesh sidecar: the data path of a task.
//!
//! # Layout
//!
//! - [`view`]: the mesh view (services, their VIP:port and endpoints), in the
//!   JSON form `/config` prints and `--view-file` reads.
//! - [`balance`]: which endpoint a new connection goes to: least connections
//!   by power of two choices, own availability zone first, passive health.
//! - [`proxy`]: one accept loop per VIP listener; a connection's error stays
//!   in its task and never stops the loop.
//!
//! The balancer picks from state it owns and never calls AWS.

pub mod balance;
pub mod proxy;
pub mod view;
