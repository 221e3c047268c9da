//! Receivers running on ephemeral loopback ports, for the receivers' tests: started in a
//! task, stopped on demand, with the addresses they bound.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::BoundAddrs;
use crate::config::ReceiverConfig;

/// What a receiver's `serve` is handed besides its config and sink: where to report the
/// bound addresses, and the future that stops it.
pub(crate) type OnBound = Box<dyn FnOnce(BoundAddrs) + Send>;
/// See [`OnBound`].
pub(crate) type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Both receivers on 127.0.0.1 port 0, refusing requests over `max_request_bytes`.
pub(crate) fn loopback_config(max_request_bytes: usize) -> ReceiverConfig {
    ReceiverConfig {
        grpc_endpoint: ([127, 0, 0, 1], 0).into(),
        http_endpoint: ([127, 0, 0, 1], 0).into(),
        max_request_bytes,
        ..ReceiverConfig::default()
    }
}

/// Receivers serving in a task.
pub(crate) struct RunningReceivers {
    /// Where they listen.
    pub(crate) addrs: BoundAddrs,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RunningReceivers {
    /// Spawns `serve` (a receiver's `serve` with its config and sink already chosen) and
    /// waits until it has bound.
    pub(crate) async fn start<F, Fut>(serve: F) -> RunningReceivers
    where
        F: FnOnce(OnBound, Shutdown) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let on_bound: OnBound = Box::new(move |addrs| {
            let _ = bound_tx.send(addrs);
        });
        let shutdown: Shutdown = Box::pin(async {
            let _ = stopped.await;
        });
        let server = tokio::spawn(serve(on_bound, shutdown));
        let addrs = bound_rx.await.expect("receivers bound");
        RunningReceivers {
            addrs,
            stop,
            server,
        }
    }

    /// Stops the receivers and checks they shut down cleanly and promptly.
    pub(crate) async fn stop(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("receivers stop promptly")
            .unwrap()
            .unwrap();
    }
}
