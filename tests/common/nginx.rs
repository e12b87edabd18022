//! A real nginx (Debian's `nginx-light`; scripts/test.sh installs it) as the reverse proxy
//! in front of streamhub nodes: started on free loopback ports with a generated config in a
//! temp dir (pid, logs and temp paths there, `daemon off`), stopped on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, wait_until, READY_TIMEOUT};

/// nginx proxying two sites to streamhub: `all` round robin over every node, `first` to the
/// first node only (so a per-node limit is reached deterministically).
pub struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Proxies to every node, round robin.
    pub all: SocketAddr,
    /// Proxies to the first node only.
    pub first: SocketAddr,
}

/// The proxy settings of a site, as an operator would write them (docs/OPERATING.md): the
/// client's address appended to X-Forwarded-For everywhere; for the WebSocket routes,
/// HTTP/1.1 upstream and the upgrade headers passed on. Everything else keeps nginx's
/// defaults — HTTP/1.0 upstream and response buffering on, under which an event stream
/// would sit in nginx's buffers: streamhub's SSE responses carry `X-Accel-Buffering: no`,
/// which turns buffering off for them, and the tests prove that suffices.
fn site(listen: SocketAddr, upstream: &str, ws_paths: &[&str]) -> String {
    let forwarded = "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;";
    let websockets: String = ws_paths
        .iter()
        .map(|path| {
            format!(
                "location = {path} {{ proxy_pass http://{upstream}; {forwarded} proxy_http_version 1.1;
                 proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;
                 proxy_read_timeout 1h; proxy_send_timeout 1h; }}\n"
            )
        })
        .collect();
    format!(
        "server {{ listen {listen};\n{websockets} location / {{ proxy_pass http://{upstream}; {forwarded} proxy_read_timeout 1h; }} }}"
    )
}

impl Nginx {
    /// Starts nginx in front of `nodes` (`http://127.0.0.1:<port>` bases); returns once it
    /// answers `/healthz` on both sites.
    pub fn start(nodes: &[&str]) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        // Workers run as an unprivileged user when the tests run as root: they must reach
        // the config's directory.
        set_mode(dir.path(), 0o755);
        let (all, first) = (loopback(free_port()), loopback(free_port()));
        let upstream = |nodes: &[&str]| {
            nodes.iter().map(|n| format!("server {};", n.trim_start_matches("http://"))).collect::<Vec<_>>().join(" ")
        };
        let d = dir.path().display();
        let config = format!(
            "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream all_nodes {{ {all_nodes} }}
  upstream first_node {{ {first_node} }}
  {all_site}
  {first_site}
}}
",
            all_nodes = upstream(nodes),
            first_node = upstream(&nodes[..1]),
            all_site = site(all, "all_nodes", &["/v1/ws", "/connection/websocket"]),
            first_site = site(first, "first_node", &["/v1/ws", "/connection/websocket"]),
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config).expect("write nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed (scripts/test.sh installs nginx-light)");
        let mut nginx = Nginx { child: Some(child), dir, all, first };
        for site in [all, first] {
            wait_until("nginx to proxy /healthz", READY_TIMEOUT, || {
                let exited = nginx.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                assert!(!exited, "nginx exited: {}", nginx.error_log());
                healthz_answers(site)
            });
        }
        nginx
    }

    pub fn url(site: SocketAddr, path: &str) -> String {
        format!("http://{site}{path}")
    }

    /// nginx's error log (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM (fast shutdown: the master stops its workers), SIGKILL if it lingers.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn nginx_binary() -> String {
    std::env::var("NGINX").unwrap_or_else(|_| {
        if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx".into()
        } else {
            "nginx".into()
        }
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A blocking `GET /healthz` through `site` answered 200.
fn healthz_answers(site: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&site, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(stream.read_exact(&mut head), Ok(()) if head.ends_with(b"200"))
}
