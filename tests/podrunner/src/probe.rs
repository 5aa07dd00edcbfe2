//! Readiness and liveness probes: `httpGet` (any status from 200 to 399 passes) and
//! `tcpSocket` (a connection passes), both sent to the pod IP. `exec` and `grpc` probes are
//! not run and always pass.
//!
//! [`Tracker`] is the kubelet's bookkeeping, pure: the first probe runs `initialDelaySeconds`
//! after the start, then one every `periodSeconds`; `successThreshold` passes in a row make the
//! result pass, `failureThreshold` failures in a row make it fail. A readiness result starts
//! failed, a liveness result starts passed.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// What a probe sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// GET `http://<pod IP>:<port><path>`.
    Http {
        /// Port.
        port: u16,
        /// Path (with query).
        path: String,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
    /// Connect to `<pod IP>:<port>`.
    Tcp {
        /// Port.
        port: u16,
    },
    /// Not run; passes.
    Unsupported,
}

/// A probe of one container, read from its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// What is sent.
    pub action: Action,
    /// Delay before the first probe.
    pub initial_delay: Duration,
    /// Time between probes.
    pub period: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Passes in a row that make the result pass.
    pub success_threshold: u32,
    /// Failures in a row that make the result fail.
    pub failure_threshold: u32,
}

fn seconds(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(
        v.and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .unwrap_or(default),
    )
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|s| u32::try_from(s).ok())
        .filter(|s| *s > 0)
        .unwrap_or(default)
}

/// A port number, or the `containerPort` of the container's port of that name.
fn port(p: &IntOrString, container: &Container) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// The probe as the runner runs it, with the kubelet's defaults (period 10 s, timeout 1 s,
/// thresholds 1 and 3).
#[must_use]
pub fn spec(probe: &Probe, container: &Container) -> Spec {
    let action = if let Some(h) = &probe.http_get {
        match port(&h.port, container) {
            Some(port) => Action::Http {
                port,
                path: h.path.clone().unwrap_or_else(|| "/".to_owned()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|x| (x.name.clone(), x.value.clone()))
                    .collect(),
            },
            None => Action::Unsupported,
        }
    } else if let Some(t) = &probe.tcp_socket {
        port(&t.port, container).map_or(Action::Unsupported, |port| Action::Tcp { port })
    } else {
        Action::Unsupported
    };
    Spec {
        action,
        initial_delay: Duration::from_secs(
            probe
                .initial_delay_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
        ),
        period: seconds(probe.period_seconds, 10),
        timeout: seconds(probe.timeout_seconds, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    }
}

/// The kubelet's bookkeeping of one probe of one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    /// The probe.
    pub spec: Spec,
    passing: bool,
    passes: u32,
    failures: u32,
    next: Instant,
    in_flight: bool,
}

impl Tracker {
    /// A tracker for a container started at `started`; `passing` is the initial result.
    #[must_use]
    pub fn new(spec: Spec, started: Instant, passing: bool) -> Self {
        Self {
            next: started + spec.initial_delay,
            spec,
            passing,
            passes: 0,
            failures: 0,
            in_flight: false,
        }
    }

    /// Whether a probe should be sent now.
    #[must_use]
    pub fn due(&self, now: Instant) -> bool {
        !self.in_flight && now >= self.next
    }

    /// A probe was sent at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.in_flight = true;
        self.next = now + self.spec.period;
    }

    /// Records a probe's outcome; returns the result (passing or not).
    pub fn record(&mut self, passed: bool) -> bool {
        self.in_flight = false;
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if self.passes >= self.spec.success_threshold {
                self.passing = true;
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= self.spec.failure_threshold {
                self.passing = false;
            }
        }
        self.passing
    }

    /// The current result.
    #[must_use]
    pub fn passing(&self) -> bool {
        self.passing
    }
}

/// Sends one probe to `ip`; whether it passed.
pub async fn run(http: &reqwest::Client, ip: &str, spec: &Spec) -> bool {
    match &spec.action {
        Action::Unsupported => true,
        Action::Tcp { port } => matches!(
            tokio::time::timeout(spec.timeout, tokio::net::TcpStream::connect((ip, *port))).await,
            Ok(Ok(_))
        ),
        Action::Http {
            port,
            path,
            headers,
        } => {
            let mut request = http
                .get(format!("http://{ip}:{port}{path}"))
                .timeout(spec.timeout);
            for (k, v) in headers {
                request = request.header(k, v);
            }
            request
                .send()
                .await
                .is_ok_and(|r| (200..400).contains(&r.status().as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container() -> Container {
        serde_json::from_value(json!({
            "name": "worker",
            "ports": [{"name": "metrics", "containerPort": 9000}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"},
                               "periodSeconds": 5, "failureThreshold": 2, "successThreshold": 1}
        }))
        .unwrap()
    }

    #[test]
    fn a_named_port_is_the_containers_port_and_defaults_fill_the_rest() {
        let c = container();
        let s = spec(c.readiness_probe.as_ref().unwrap(), &c);
        assert_eq!(
            s.action,
            Action::Http {
                port: 9000,
                path: "/readyz".to_owned(),
                headers: vec![]
            }
        );
        assert_eq!(
            (s.period, s.timeout, s.initial_delay),
            (
                Duration::from_secs(5),
                Duration::from_secs(1),
                Duration::ZERO
            )
        );
    }

    #[test]
    fn readiness_passes_at_the_success_threshold_and_fails_at_the_failure_threshold() {
        let c = container();
        let start = Instant::now();
        let mut t = Tracker::new(spec(c.readiness_probe.as_ref().unwrap(), &c), start, false);
        assert!(t.due(start));
        t.sent(start);
        assert!(!t.due(start), "one probe at a time");
        assert!(!t.record(false));
        assert!(!t.due(start + Duration::from_secs(4)));
        assert!(t.due(start + Duration::from_secs(5)));
        assert!(t.record(true));
        assert!(t.record(false), "one failure is below the threshold");
        assert!(!t.record(false));
        assert!(!t.passing());
    }

    #[tokio::test]
    async fn an_http_probe_passes_on_a_listening_server_and_fails_without_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::AsyncWriteExt as _;
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        });
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut s = Spec {
            action: Action::Http {
                port,
                path: "/readyz".to_owned(),
                headers: vec![],
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        };
        assert!(run(&http, "127.0.0.1", &s).await);
        s.action = Action::Tcp { port };
        assert!(run(&http, "127.0.0.1", &s).await);
        s.action = Action::Http {
            port: 1,
            path: "/".to_owned(),
            headers: vec![],
        };
        assert!(!run(&http, "127.0.0.1", &s).await);
    }
}
