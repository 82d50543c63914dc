//! Host-name lookups for transparent mode, asked by the shards: [`lookup`] queues the name to
//! the lookup thread `ringlb-lookup` (a current-thread tokio runtime running hickory-resolver,
//! started at the first lookup) and returns a oneshot receiver the shard checks from its own
//! runtime (`try_recv` on a 1 ms timer: a monoio waker cannot be woken from another thread).
//! A shard never blocks on a lookup; it keeps the answers in its own cache
//! (`proxy/transparent.rs`), so this runs on cache misses only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::sync::{mpsc, oneshot};

use crate::config::{DnsDiscovery, DnsType};

/// Resolved is a lookup's outcome: the addresses and the smallest TTL (seconds), or why not.
pub(crate) type Resolved = Result<(Vec<IpAddr>, u32), String>;

/// One lookup request.
struct Request {
    name: String,
    resolvers: Option<Arc<[SocketAddr]>>,
    reply: oneshot::Sender<Resolved>,
}

/// The lookup thread's queue, once started.
static QUEUE: OnceLock<Option<mpsc::UnboundedSender<Request>>> = OnceLock::new();

/// How long one lookup may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Looks `name` up with `resolvers` (`None`: `/etc/resolv.conf` and `/etc/hosts`). The answer
/// comes on the returned receiver (an error when the lookup thread cannot run).
pub(crate) fn lookup(
    name: &str,
    resolvers: Option<Arc<[SocketAddr]>>,
) -> oneshot::Receiver<Resolved> {
    let (reply, rx) = oneshot::channel();
    let queue = QUEUE.get_or_init(start);
    let req = Request {
        name: name.to_string(),
        resolvers,
        reply,
    };
    match queue {
        Some(q) => {
            if let Err(mpsc::error::SendError(req)) = q.send(req) {
                let _ = req
                    .reply
                    .send(Err("the lookup thread is not running".to_string()));
            }
        }
        None => {
            let _ = req
                .reply
                .send(Err("the lookup thread could not start".to_string()));
        }
    }
    rx
}

/// Starts the lookup thread (for the life of the process).
fn start() -> Option<mpsc::UnboundedSender<Request>> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("transparent mode: cannot build the lookup runtime: {e}");
            return None;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("ringlb-lookup".to_string())
        .spawn(move || runtime.block_on(serve(rx)));
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!("transparent mode: cannot spawn the lookup thread: {e}");
            None
        }
    }
}

/// Answers requests, one task each, with one resolver per resolver list.
async fn serve(mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut resolvers: HashMap<Option<Vec<SocketAddr>>, Arc<TokioResolver>> = HashMap::new();
    while let Some(req) = rx.recv().await {
        let key = req.resolvers.as_deref().map(<[SocketAddr]>::to_vec);
        let resolver = match resolvers.get(&key) {
            Some(r) => r.clone(),
            None => {
                let spec = DnsDiscovery {
                    name: String::new(),
                    record_type: DnsType::Any,
                    port: None,
                    refresh: None,
                    min_ttl: Duration::from_secs(1),
                    max_ttl: Duration::from_secs(300),
                    resolvers: key.clone(),
                    hold: Duration::ZERO,
                    hold_obsolete: Duration::ZERO,
                    timeout: TIMEOUT,
                };
                match super::dns::resolver(&spec) {
                    Ok(r) => {
                        let r = Arc::new(r);
                        resolvers.insert(key, r.clone());
                        r
                    }
                    Err(why) => {
                        let _ = req.reply.send(Err(why));
                        continue;
                    }
                }
            }
        };
        tokio::spawn(async move {
            let answer = match tokio::time::timeout(
                TIMEOUT * 2,
                super::dns::lookup_ip(&resolver, &req.name),
            )
            .await
            {
                Ok(a) => a,
                Err(_) => Err("timeout".to_string()),
            };
            let _ = req.reply.send(answer);
        });
    }
}
