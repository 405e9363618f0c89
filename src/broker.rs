//! How both sides reach the broker: its URLs, kept out of logs (`url`: one
//! node, or the comma-separated nodes of a cluster), and the flags that give
//! them (`args`); connecting to the next node that answers, with TLS
//! (`amqps://`, with the system's roots or a CA file of your own) (`connect`);
//! the [frame guard](guard) every byte from the broker passes through, bounded
//! broker steps and which refusals are permanent (`step`), and the pacing of
//! reconnect loops (`reconnect`). Shared so the gateway and the worker connect
//! and behave alike when a broker goes away, refuses them, or delivers
//! something hostile.

mod args;
mod connect;
pub mod guard;
mod reconnect;
mod step;
mod transport;
mod url;

pub use self::{
    args::{BrokerArgs, BrokerArgsError},
    connect::{Broker, ConnectError, Connected},
    reconnect::{Reconnect, backoff, sleep_or_stop},
    step::{STEP_TIMEOUT, StepError, bounded, is_permanent},
    url::{AmqpUrl, InvalidUrl, parse_list},
};
