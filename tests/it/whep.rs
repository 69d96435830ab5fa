//! The WHEP door (`/whep`) against clients that are not rtcam's page: a WHEP player from npm
//! (`@eyevinn/webrtc-player`) in headless Chromium on a page of another origin, and a WebRTC
//! peer of the `webrtc` crate speaking WHEP over plain HTTP/1.1: an offer with its candidates,
//! an offer trickling them by `PATCH`, `DELETE`, and the refusals a stranger meets.

use crate::common;

use common::http::{request, Reply};
use common::{start, test_config};
use rtcam::auth::{Authority, Right};
use rtcam::control::exec::Requester;
use rtcam::control::Command;
use rtcam::signalling::whep;
use rtcam_viewer::whep::{self as whep_client, WhepPlayer};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use webrtc::peer_connection::RTCIceCandidateInit;

const SECRET: &str = "whep-test-secret-of-at-least-32-bytes";

/// One browser at a time, as in tests/browser.rs.
static BROWSER: Mutex<()> = Mutex::new(());

async fn sessions(rt: &common::Running) -> Vec<Value> {
    let list = rt
        .app
        .controller()
        .execute(Command::Sessions, Requester::Mqtt)
        .await
        .expect("sessions lists");
    list.as_array().cloned().unwrap_or_default()
}

/// Waits until `sessions` satisfies `pred`, up to 10 s.
async fn wait_sessions(rt: &common::Running, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = sessions(rt).await;
        if pred(&list) || Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
}

fn headers_named<'a>(reply: &'a Reply, name: &str) -> Vec<&'a str> {
    reply
        .head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

/// The WHEP player of `rtcam_viewer::whep` (shared with the benchmark), with this file's
/// assertions.
struct Player(WhepPlayer);

impl Player {
    async fn new() -> Player {
        Player(WhepPlayer::new().await.unwrap())
    }

    async fn offer(&mut self, gather: bool) -> String {
        self.0.offer(gather).await.unwrap()
    }

    async fn gather(&mut self) -> Vec<RTCIceCandidateInit> {
        self.0
            .gather()
            .await
            .expect("the player gathered candidates")
    }

    async fn answer(&self, sdp: String) {
        self.0.answer(sdp).await.unwrap();
    }

    /// Waits for `n` RTP packets of video, up to 15 s; returns how many came.
    async fn wait_packets(&self, n: usize) -> usize {
        self.0.wait_packets(n, Duration::from_secs(15)).await
    }

    async fn close(self) {
        self.0.close().await;
    }
}

/// The ICE credentials of an SDP, as a trickle fragment starts with them.
fn ice_lines(sdp: &str) -> String {
    sdp.lines()
        .filter(|l| l.starts_with("a=ice-ufrag:") || l.starts_with("a=ice-pwd:"))
        .take(2)
        .map(|l| format!("{l}\r\n"))
        .collect()
}

async fn post_offer(addr: SocketAddr, sdp: &str, extra: &[(&str, &str)]) -> Reply {
    let r = whep_client::post_offer(addr, sdp, extra).await.unwrap();
    Reply {
        status: r.status,
        head: r.head,
        body: r.body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_client_offers_with_and_without_trickle_and_deletes() {
    let mut config = test_config("whep");
    // One slot: a second offer meets `too_many_sessions` while a session runs.
    config.webrtc.max_sessions = 1;
    let rt = start(config).await;
    let addr = rt.app.http_addr();

    // Without trickle: every candidate in the offer.
    let mut player = Player::new().await;
    let offer = player.offer(true).await;
    let created = post_offer(addr, &offer, &[]).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("content-type"), Some("application/sdp"));
    let location = created.header("location").expect("a Location").to_string();
    assert!(location.starts_with("/whep/"), "{location}");
    let etag = created.header("etag").expect("an ETag").to_string();
    assert_eq!(
        created.header("accept-patch"),
        Some("application/trickle-ice-sdpfrag")
    );
    player.answer(created.text()).await;
    assert!(player.wait_packets(30).await >= 30, "no video over WHEP");
    let list = wait_sessions(&rt, |l| l.iter().any(|s| s["state"] == "connected")).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["transport"], "whep", "{list:?}");
    assert_eq!(list[0]["codec"], "H264", "{list:?}");
    // The resource id is a secret: `sessions` names the session by its label only.
    let id = location.trim_start_matches("/whep/");
    assert!(!serde_json::to_string(&list).unwrap().contains(id));

    stale_patches_are_refused(addr, &location, &offer).await;
    let answer = created.text();
    let etag = ice_restart(&mut player, addr, &location, &answer, &etag).await;

    // Another client that does not know the id reaches nothing.
    for path in [
        "/whep/AAAAAAAAAAAAAAAAAAAAAA".to_string(),
        "/whep/nonsense".to_string(),
        format!("{location}x"),
    ] {
        let r = request(addr, "DELETE", &path, &[], b"").await.unwrap();
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(json_of(&r)["code"], "unknown_session", "{path}");
    }
    assert_eq!(sessions(&rt).await.len(), 1);

    let deleted = request(addr, "DELETE", &location, &[], b"").await.unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let list = wait_sessions(&rt, |l| l.is_empty()).await;
    assert!(list.is_empty(), "the session outlived its DELETE: {list:?}");
    let again = request(addr, "DELETE", &location, &[], b"").await.unwrap();
    assert_eq!(again.status, 404);
    player.close().await;

    with_trickle(&rt, addr, &etag).await;

    refusals_of_an_open_camera(addr).await;
    rt.app.stop().await;
}

/// A `PATCH` with a stale `If-Match` is refused.
async fn stale_patches_are_refused(addr: SocketAddr, location: &str, offer: &str) {
    let frag = format!("{}a=end-of-candidates\r\n", ice_lines(offer));
    let stale = request(
        addr,
        "PATCH",
        location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", "\"not-the-tag\""),
        ],
        frag.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(stale.status, 412, "{}", stale.text());
}

/// An ICE restart as RFC 9725 describes it: the player's new credentials and candidates in a
/// `PATCH` with `If-Match: *`, rtcam's new ones in the `200 OK`, a new `ETag`, and the video
/// going on over the new ICE session. Returns the new tag.
async fn ice_restart(
    player: &mut Player,
    addr: SocketAddr,
    location: &str,
    answer: &str,
    etag: &str,
) -> String {
    player.0.pc.restart_ice().await.unwrap();
    let offer = player.0.pc.create_offer(None).await.unwrap();
    player.0.pc.set_local_description(offer).await.unwrap();
    let offer = player.0.pc.local_description().await.unwrap().sdp;
    assert_ne!(whep::ice_ufrag(&offer), whep::ice_ufrag(answer));
    let mut frag = format!(
        "{}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n",
        ice_lines(&offer)
    );
    // The player keeps its candidates through the restart (the offer carries them), or
    // gathers anew.
    let mut candidates: Vec<String> = offer
        .lines()
        .filter_map(|l| {
            l.trim_end()
                .strip_prefix("a=")
                .filter(|c| c.starts_with("candidate:"))
        })
        .map(str::to_owned)
        .collect();
    while let Some(c) = player.0.next_candidate(Duration::from_millis(500)).await {
        candidates.push(c.candidate);
    }
    assert!(
        !candidates.is_empty(),
        "the player has no candidates: {offer}"
    );
    for c in candidates {
        frag.push_str(&format!("a={c}\r\n"));
    }
    let restarted = request(
        addr,
        "PATCH",
        location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", "*"),
        ],
        frag.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(restarted.status, 200, "{}", restarted.text());
    assert_eq!(
        restarted.header("content-type"),
        Some("application/trickle-ice-sdpfrag")
    );
    let new_etag = restarted.header("etag").expect("a new ETag").to_string();
    assert_ne!(new_etag, etag);
    let theirs = whep::parse_fragment(&restarted.text()).unwrap();
    assert!(
        theirs.ice_pwd.is_some() && !theirs.candidates.is_empty(),
        "{}",
        restarted.text()
    );
    assert_ne!(theirs.ice_ufrag.as_deref(), whep::ice_ufrag(answer));
    // rtcam's answer again, with its new credentials and candidates.
    player.answer(whep::restart_offer(answer, &theirs)).await;
    let before = player.0.packets();
    assert!(
        player.wait_packets(before + 60).await >= before + 60,
        "no video after the ICE restart"
    );
    new_etag
}

/// An offer without candidates, then the candidates in a `PATCH` with the resource's tag.
async fn with_trickle(rt: &common::Running, addr: SocketAddr, first_etag: &str) {
    let mut player = Player::new().await;
    let offer = player.offer(false).await;
    assert!(!offer.contains("a=candidate"), "{offer}");
    let created = post_offer(addr, &offer, &[]).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let location = created.header("location").unwrap().to_string();
    let etag2 = created.header("etag").unwrap().to_string();
    assert_ne!(first_etag, etag2, "each session has its own ICE session");
    player.answer(created.text()).await;
    let mut frag = format!(
        "{}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n",
        ice_lines(&offer)
    );
    for c in player.gather().await {
        frag.push_str(&format!("a={}\r\n", c.candidate));
    }
    frag.push_str("a=end-of-candidates\r\n");
    let patched = request(
        addr,
        "PATCH",
        &location,
        &[
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", &etag2),
        ],
        frag.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(patched.status, 204, "{}", patched.text());
    assert!(
        player.wait_packets(30).await >= 30,
        "no video after trickle"
    );
    let full = post_offer(addr, &common::real_offer_sdp().await, &[]).await;
    assert_eq!(full.status, 503, "{}", full.text());
    assert_eq!(json_of(&full)["code"], "too_many_sessions");
    assert_eq!(full.header("retry-after"), Some("10"));
    let deleted = request(addr, "DELETE", &location, &[], b"").await.unwrap();
    assert_eq!(deleted.status, 200);
    assert!(wait_sessions(rt, |l| l.is_empty()).await.is_empty());
    player.close().await;
}

/// What a stranger meets at an open camera's WHEP door: bad offers, a page of another origin,
/// and the preflight a same-origin page needs none of.
async fn refusals_of_an_open_camera(addr: SocketAddr) {
    let bad = post_offer(addr, "this is not SDP", &[]).await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(json_of(&bad)["code"], "bad_sdp", "{}", bad.text());
    let wrong_type = request(
        addr,
        "POST",
        "/whep",
        &[("Content-Type", "text/plain")],
        b"v=0",
    )
    .await
    .unwrap();
    assert_eq!(wrong_type.status, 400, "{}", wrong_type.text());
    let big = "a".repeat(70 * 1024);
    let too_big = post_offer(addr, &big, &[]).await;
    assert_eq!(too_big.status, 413, "{}", too_big.text());
    assert_eq!(json_of(&too_big)["code"], "payload_too_large");
    // An open camera lets no other web page in: a stranger's site must not watch through a
    // visitor's browser.
    let offer = common::real_offer_sdp().await;
    let foreign = post_offer(addr, &offer, &[("Origin", "http://evil.example")]).await;
    assert_eq!(foreign.status, 403, "{}", foreign.text());
    assert!(foreign.header("access-control-allow-origin").is_none());
    let preflight = request(
        addr,
        "OPTIONS",
        "/whep",
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(preflight.status, 403);
    let own = request(addr, "OPTIONS", "/whep", &[], b"").await.unwrap();
    assert_eq!(own.status, 204, "{}", own.text());
    assert_eq!(own.header("accept-post"), Some("application/sdp"));
}

fn token(rights: Vec<Right>) -> String {
    let a = Authority::new(SECRET, "whepauth");
    a.mint(&a.claims(Duration::from_secs(600), rights, SystemTime::now()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_from_npm_decodes_in_chromium_with_a_token() {
    let mut config = test_config("whepauth");
    config.auth.secret = SECRET.into();
    config.webrtc.turn_urls = vec!["turn:127.0.0.1:3479?transport=udp".into()];
    config.webrtc.turn_secret = "turn-rest-secret".into();
    config.webrtc.ice_servers = vec![rtcam::config::IceServer {
        urls: vec!["turn:127.0.0.1:3480".into()],
        username: "owner".into(),
        credential: "static-password".into(),
    }];
    let rt = start(config).await;
    let addr = rt.app.http_addr();

    let view = token(vec![Right::View]);
    refusals_and_ice_servers_with_tokens(addr, &view).await;

    // The npm player, on a page of the test's own origin, with the token.
    let whep_url = format!("http://{addr}/whep");
    let (ok, report, output) = tokio::task::spawn_blocking(move || {
        let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
        let script = format!("{}/tests/browser/whep.mjs", env!("CARGO_MANIFEST_DIR"));
        let out = Process::new("node")
            .arg(script)
            .args(["--whep", &whep_url, "--token", &view])
            .args(["--frames", "30", "--timeout", "30000"])
            .output()
            .expect("node runs (make test-deps installs the browser test's packages)");
        (
            out.status.success(),
            common::script_report(&out.stdout),
            format!(
                "stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap();
    assert!(ok, "the WHEP player did not decode: {output}");
    assert!(
        report["framesDecoded"].as_u64().unwrap_or(0) >= 30,
        "{report}"
    );
    assert_eq!(report["frameWidth"], 320, "{report}");
    assert_eq!(report["codec"], "video/H264", "{report}");
    eprintln!("WHEP player in Chromium: {report}");
    assert_eq!(report["unloaded"], true, "{report}");
    // The player's DELETE ended the session.
    let list = wait_sessions(&rt, |l| l.is_empty()).await;
    assert!(list.is_empty(), "{list:?}");
    rt.app.stop().await;
}

/// Offers without a good token get 401 with the protocol's code; `OPTIONS` names the ICE
/// servers to a token holder only: TURN with derived credentials, never the owner's static one.
async fn refusals_and_ice_servers_with_tokens(addr: SocketAddr, view: &str) {
    // A wrong token, or none, is refused with the protocol's code.
    let offer = common::real_offer_sdp().await;
    let wrong = token(vec![Right::Metrics]);
    for auth in [
        None,
        Some(format!("Bearer {wrong}")),
        Some("Bearer nonsense".into()),
    ] {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let refused = post_offer(addr, &offer, &headers).await;
        assert_eq!(refused.status, 401, "{auth:?}: {}", refused.text());
        assert_eq!(
            json_of(&refused)["code"],
            "unauthorized",
            "{}",
            refused.text()
        );
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    }

    // A token holder asking `OPTIONS` gets the TURN server with derived credentials.
    let bearer = format!("Bearer {view}");
    let options = request(addr, "OPTIONS", "/whep", &[("Authorization", &bearer)], b"")
        .await
        .unwrap();
    assert_eq!(options.status, 204, "{}", options.text());
    let links = headers_named(&options, "link");
    assert_eq!(links.len(), 1, "{}", options.head);
    assert!(
        links[0]
            .starts_with("<turn:127.0.0.1:3479?transport=udp>; rel=\"ice-server\"; username=\"")
            && links[0].contains("credential-type=\"password\""),
        "{}",
        links[0]
    );
    assert!(!options.head.contains("static-password"));
    // A browser's preflight carries no token and gets no servers, but the CORS answer.
    let preflight = request(
        addr,
        "OPTIONS",
        "/whep",
        &[
            ("Origin", "http://dashboard.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(preflight.status, 204);
    assert!(headers_named(&preflight, "link").is_empty());
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://dashboard.example")
    );
}
