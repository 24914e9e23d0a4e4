//! One handle to Redis, single node or Cluster, shared by the API and the queue engine.
//!
//! `REDIS_URL` chooses the topology: `redis://` is one node, `redis+cluster://` a cluster seed.
//! The shared multiplexed connection is opened on first use and re-opened by the client after a
//! failure, so a process that starts while Redis is down comes up, answers 503, and recovers by
//! itself. Blocking reads (`XREADGROUP BLOCK`) would stall every command queued behind them on a
//! multiplexed connection, so each blocking reader asks for a [`RedisHandle::dedicated`] one.

use anyhow::Context;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Commands and their replies are small and latency-bound: send each at once (no Nagle).
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct RedisHandle {
    inner: Arc<Inner>,
}

enum Topology {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

struct Inner {
    topology: Topology,
    shared: OnceCell<RedisConn>,
}

/// A connection of either topology; cheap to clone (the multiplexed ones share one socket).
#[derive(Clone)]
pub enum RedisConn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisHandle {
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let topology = if let Some(rest) = url
            .strip_prefix("redis+cluster://")
            .map(|r| format!("redis://{r}"))
            .or_else(|| {
                url.strip_prefix("rediss+cluster://")
                    .map(|r| format!("rediss://{r}"))
            }) {
            let client = ClusterClient::builder(vec![rest])
                .tcp_settings(tcp_settings())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                .retries(3)
                .build()
                .context("while configuring the Redis Cluster client (REDIS_URL)")?;
            Topology::Cluster(Box::new(client))
        } else {
            let info = url
                .into_connection_info()
                .context("while configuring the Redis client (REDIS_URL)")?
                .set_tcp_settings(tcp_settings());
            Topology::Single(
                redis::Client::open(info)
                    .context("while configuring the Redis client (REDIS_URL)")?,
            )
        };
        Ok(Self {
            inner: Arc::new(Inner {
                topology,
                shared: OnceCell::new(),
            }),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.topology, Topology::Cluster(_))
    }

    /// The process-wide multiplexed connection.
    pub async fn conn(&self) -> redis::RedisResult<RedisConn> {
        self.inner
            .shared
            .get_or_try_init(|| async {
                match &self.inner.topology {
                    Topology::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(RESPONSE_TIMEOUT))
                            .set_number_of_retries(2)
                            .set_max_delay(Duration::from_millis(500));
                        client
                            .get_connection_manager_with_config(config)
                            .await
                            .map(RedisConn::Managed)
                    }
                    Topology::Cluster(client) => {
                        client.get_async_connection().await.map(RedisConn::Cluster)
                    }
                }
            })
            .await
            .cloned()
    }

    /// A connection of its own, for commands that block (`BLOCK` reads): `block_for` is added to
    /// its response timeout.
    pub async fn dedicated(&self, block_for: Duration) -> redis::RedisResult<RedisConn> {
        match &self.inner.topology {
            Topology::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT + block_for));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(RedisConn::Direct)
            }
            Topology::Cluster(client) => {
                client.get_async_connection().await.map(RedisConn::Cluster)
            }
        }
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Managed(c) => c.req_packed_command(cmd),
            RedisConn::Direct(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Direct(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Managed(c) => c.get_db(),
            RedisConn::Direct(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
