//! Nonces, unauthenticated input, and asynchronous (parked) authentication.

use super::*;

#[test]
fn stale_nonce_after_lifetime() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    w.advance(500);
    c.authed(&mut w, Method::REFRESH, |_| {});
    w.advance(101);
    let resp = c.authed(&mut w, Method::REFRESH, |_| {});
    assert_eq!(error_code(&resp), Some(438));
    c.nonce = Some(nonce_of(&resp));
    let resp = c.authed(&mut w, Method::REFRESH, |_| {});
    assert_eq!(error_code(&resp), None);
}

#[test]
fn unauthenticated_requests_create_no_state() {
    let mut w = World::new();
    for i in 0..5000u32 {
        let mut c = Client::new(&format!("203.0.{}.{}:{}", i % 200, i % 250, 1024 + i));
        let req = c.build(Method::ALLOCATE, i % 2 == 0, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
        });
        let resp = w.request(c.addr, &req);
        assert!(matches!(error_code(&resp), Some(401) | Some(438)));
    }
    assert_eq!(w.server.allocation_count(), 0);
    assert_eq!(w.server.pending_auth_count(), 0);
    assert_eq!(w.server.timer_count(), 0);
    assert_eq!(w.server.slot_capacity(), 0);
    assert!(w.sockets.open.is_empty());
}

/// An observer that defers every decision to the test.
struct Deferring {
    tickets: Mutex<Vec<crate::auth::Ticket>>,
}

impl Observer for Deferring {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        match request.defer() {
            Some(t) => {
                self.tickets.lock().unwrap().push(t);
                AuthDecision::Pending
            }
            None => AuthDecision::Pending,
        }
    }
}

#[test]
fn asynchronous_authentication() {
    let observer = Arc::new(Deferring {
        tickets: Mutex::new(Vec::new()),
    });
    let mut w = World::with_observer(|_| {}, observer.clone(), Arc::new(Quotas::new(0, 0)));
    let answers: Arc<Mutex<Vec<(u64, AuthDecision)>>> = Arc::default();
    let sink = answers.clone();
    w.server
        .set_ticket_sink(Arc::new(move |id, d| sink.lock().unwrap().push((id, d))));
    let mut c = Client::new("203.0.113.5:40000");
    let req = c.build(Method::ALLOCATE, false, |_| {});
    c.nonce = Some(nonce_of(&w.request(c.addr, &req)));
    let req = c.build(Method::ALLOCATE, true, |b| {
        b.add_requested_transport(stun::TRANSPORT_UDP);
    });
    let (_, out) = w.client(c.addr, &req);
    assert!(out.is_empty(), "parked, no answer yet");
    assert_eq!(w.server.pending_auth_count(), 1);
    // The observer answers from "another thread".
    let ticket = observer.tickets.lock().unwrap().pop().unwrap();
    ticket.resolve(AuthDecision::Authorized(c.key()));
    let (id, decision) = answers.lock().unwrap().pop().unwrap();
    let now = w.now;
    w.server
        .handle_auth_result(now, id, decision, &mut w.sockets);
    let resp = w.server.poll_transmit().expect("answer after auth");
    assert_eq!(error_code(&resp.data), None);
    assert_eq!(w.server.allocation_count(), 1);
    // Pending requests are bounded: beyond max_pending_auth, 508 at once.
    for i in 0..6 {
        let mut d = Client::new(&format!("203.0.113.5:{}", 10 + i));
        d.nonce = c.nonce.clone();
        let req = d.build(Method::ALLOCATE, true, |b| {
            b.add_requested_transport(stun::TRANSPORT_UDP);
        });
        let (_, out) = w.client(d.addr, &req);
        if i < 4 {
            assert!(out.is_empty());
        } else {
            assert_eq!(error_code(&out[0]), Some(508));
        }
    }
    // Unanswered requests time out and are dropped.
    w.advance(6);
    assert_eq!(w.server.pending_auth_count(), 0);
    assert_eq!(w.server.counters().refused(Refusal::AuthBusy), 2);
    assert_eq!(w.server.counters().dropped(Dropped::PendingAuthExpired), 4);
}

/// A REST-credential client at `addr` whose password comes from `secret`.
fn rest_client(addr: &str, secret: &str) -> Client {
    let mut c = Client::new(addr);
    c.username = "4102444800:carol".into(); // expires in 2100
    c.password = crate::auth::RestApiSecret::password(secret, &c.username);
    c
}

#[test]
fn every_static_auth_secret_is_valid_during_rotation() {
    let mut config = crate::config::Config {
        realm: crate::testing::REALM.into(),
        use_auth_secret: true,
        static_auth_secrets: vec!["new-secret".into(), "old-secret".into()],
        users: vec![("alice".into(), "secret".into())],
        ..Default::default()
    };
    for with_users in [true, false] {
        if !with_users {
            config.users.clear();
        }
        let observer = crate::observer_from_config(&config);
        let mut w = World::with_observer(|_| {}, observer, Arc::new(Quotas::new(0, 0)));
        rest_client("203.0.113.5:1", "new-secret").allocate(&mut w);
        rest_client("203.0.113.5:2", "old-secret").allocate(&mut w);
        let resp = rest_client("203.0.113.5:3", "unknown-secret").try_allocate(&mut w);
        assert_eq!(error_code(&resp), Some(401));
        assert_eq!(w.server.counters().refused(Refusal::BadIntegrity), 1);
        assert_eq!(w.server.allocation_count(), 2);
        // Requests on the allocation are checked with the key it was made with.
        let mut old = rest_client("203.0.113.5:2", "old-secret");
        old.learn_nonce(&mut w);
        let resp = old.authed(&mut w, Method::REFRESH, |_| {});
        assert_eq!(error_code(&resp), None);
    }
}
