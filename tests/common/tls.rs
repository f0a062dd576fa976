//! TLS for the test servers: certificates made with Debian's `openssl`, and `stunnel` in
//! front of the servers that have no TLS listener of their own (tansu 0.6 and the CQL
//! emulator). MariaDB serves TLS itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{find_program, wait_for_port, Proc};

/// A certificate authority, a server certificate it signed (naming 127.0.0.1 and localhost),
/// another it signed naming neither (for the hostname check), and a second, unrelated
/// authority for the wrong-CA cases.
pub struct Certs {
    pub ca: PathBuf,
    pub wrong_ca: PathBuf,
    pub server: [PathBuf; 2],
    pub misnamed: [PathBuf; 2],
}

fn openssl(dir: &Path, args: &[&str]) {
    let program = find_program("openssl", &["/usr/bin"]).unwrap_or_else(|| {
        panic!("openssl is not installed: run `apt-get install -y openssl` (or .ci/run)")
    });
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn self_signed_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN=orderstream test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

impl Certs {
    pub fn generate(root: &Path) -> Certs {
        let dir = root.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        self_signed_ca(&dir, "ca");
        self_signed_ca(&dir, "wrong-ca");
        let server = signed(&dir, "server", "IP:127.0.0.1,DNS:localhost");
        let misnamed = signed(&dir, "misnamed", "DNS:elsewhere.invalid");
        Certs {
            ca: dir.join("ca.pem"),
            wrong_ca: dir.join("wrong-ca.pem"),
            server,
            misnamed,
        }
    }
}

/// A server certificate and key signed by `ca`, with these subject alternative names.
fn signed(dir: &Path, name: &str, names: &str) -> [PathBuf; 2] {
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName={names}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
    [dir.join(pem), dir.join(key)]
}

/// stunnel terminating TLS on `port` with a certificate and key (`[cert, key]`) for a plain
/// server on `target`.
pub struct Stunnel {
    pub port: u16,
    pub proc: Proc,
}

impl Stunnel {
    pub fn start(root: &Path, name: &str, port: u16, target: u16, cert: &[PathBuf; 2]) -> Stunnel {
        let program = find_program("stunnel4", &["/usr/bin"])
            .or_else(|| find_program("stunnel", &["/usr/bin"]))
            .unwrap_or_else(|| {
                panic!("stunnel is not installed: run `apt-get install -y stunnel4` (or .ci/run)")
            });
        let conf = root.join(format!("stunnel-{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = notice\n\
                 [{name}]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\n\
                 cert = {}\nkey = {}\n",
                cert[0].display(),
                cert[1].display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(root.join(format!("stunnel-{name}.log"))).unwrap();
        let mut child = Command::new(program)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start stunnel");
        wait_for_port(port, "stunnel", &mut child, Duration::from_secs(30));
        Stunnel {
            port,
            proc: Proc {
                name: format!("stunnel-{name}"),
                child,
            },
        }
    }
}
