//! The login phase of a connection: feed Login Requests to the negotiation,
//! answer them, and on success create or join the session (moving to the
//! session's reactor first if it lives elsewhere).

use std::rc::Rc;

use pollux_core::reactor;

use super::{Close, Conn, Group, Phase};
use crate::config;
use crate::login::{Endpoint, Refusal, SessionType, status};
use crate::pdu::{Bhs, op};
use crate::session::{self, Entry, Session};

impl Conn {
    pub(super) fn on_login_pdu(self: &Rc<Self>, h: &Bhs, data: &[u8], raw: &[u8]) -> Result<bool, Close> {
        if h.opcode() != op::LOGIN {
            // Only Login Requests before full feature phase.
            let why = format!("opcode {:#04x} before the login completed", h.opcode());
            self.refuse_login(h, &Refusal { status: status::INVALID_DURING_LOGIN, why });
            return Err(Close::AfterFlush);
        }
        let first = {
            let mut st = self.st.borrow_mut();
            let Phase::Login(l) = &st.phase else { return Ok(true) };
            let first = l.ident.is_none();
            if first {
                st.login_itt = h.itt();
                st.cid = h.cid();
            }
            first
        };
        // A connection joining a session on another reactor moves there first.
        if first && h.tsih() != 0 {
            if let Some(e) = session::lookup(h.tsih()) {
                if e.reactor != reactor::current() {
                    self.hand_over(e.reactor, raw.to_vec());
                    return Ok(false);
                }
            }
        }
        let reply = {
            let mut st = self.st.borrow_mut();
            let Phase::Login(l) = &mut st.phase else { return Ok(true) };
            l.step(h, data)
        };
        if reply.failed() {
            self.refuse_login(h, &Refusal { status: reply.status, why: reply.why });
            return Err(Close::AfterFlush);
        }
        let mut tsih = h.tsih();
        if reply.complete {
            match self.finish_login(h) {
                Ok(t) => tsih = t,
                Err(r) => {
                    self.refuse_login(h, &r);
                    return Err(Close::AfterFlush);
                }
            }
        }
        let mut r = Bhs::new(op::LOGIN_RESP, reply.flags);
        r.lun[..6].copy_from_slice(&h.isid());
        r.lun[6..8].copy_from_slice(&tsih.to_be_bytes());
        r.itt.set(h.itt());
        r.w24.set(self.next_stat_sn());
        let cmd_sn = h.w24.get();
        let has_session = self.st.borrow().session.is_some();
        if has_session {
            self.fill_window(&mut r);
        } else {
            r.w28.set(cmd_sn);
            r.w32.set(cmd_sn);
        }
        self.send(&mut r, &[&reply.text]);
        if reply.complete {
            let mut st = self.st.borrow_mut();
            let Phase::Login(l) = std::mem::replace(&mut st.phase, Phase::FullFeature) else { unreachable!() };
            st.params = st.session.as_ref().map_or(l.params, |s| {
                // Connection parameters are this login's; session ones the session's.
                let mut p = s.params;
                p.header_digest = l.params.header_digest;
                p.data_digest = l.params.data_digest;
                p.max_send_seg = l.params.max_send_seg;
                p
            });
        }
        Ok(true)
    }

    /// Log why a login is refused (at the default level) and answer with
    /// its status.
    fn refuse_login(self: &Rc<Self>, h: &Bhs, r: &Refusal) {
        let initiator = match &self.st.borrow().phase {
            Phase::Login(l) => l.ident.as_ref().map(|i| i.initiator_name.clone()),
            Phase::FullFeature => None,
        };
        tracing::info!(
            "iscsi: login from {} ({}) refused, status {:02x}{:02x}: {}",
            self.ep.peer,
            initiator.as_deref().unwrap_or("initiator not named yet"),
            r.status.0,
            r.status.1,
            r.why
        );
        crate::counters::login_failed(self.place(), crate::counters::login_failure_reason(r.status));
        self.login_reject(h, r.status);
    }

    fn login_reject(self: &Rc<Self>, h: &Bhs, st: (u8, u8)) {
        let mut r = Bhs::new(op::LOGIN_RESP, h.flags & 0x0c);
        r.lun[..6].copy_from_slice(&h.isid());
        r.itt.set(h.itt());
        r.w24.set(self.next_stat_sn());
        r.w28.set(h.w24.get());
        r.w32.set(h.w24.get());
        r.as_bytes_mut_status(st);
        self.send(&mut r, &[]);
    }

    /// Create the session (TSIH 0) or join an existing one.
    fn finish_login(self: &Rc<Self>, h: &Bhs) -> Result<u16, Refusal> {
        let refuse = |status, why: String| Refusal { status, why };
        let (ident, params, qd) = {
            let st = self.st.borrow();
            let Phase::Login(l) = &st.phase else { return Err(refuse(status::TARGET_ERROR, "login already finished".into())) };
            let ident = l.ident.clone().ok_or_else(|| refuse(status::MISSING_PARAMETER, "no InitiatorName".into()))?;
            (ident, l.params, l.queue_depth)
        };
        let group = Group::get().map_err(|e| refuse(status::OUT_OF_RESOURCES, format!("no connection group: {e}")))?;
        let cmd_sn = h.w24.get();
        if ident.tsih != 0 {
            // Add a connection to an existing session.
            let gone = || refuse(status::SESSION_DOES_NOT_EXIST, format!("no session {} of {} to join", ident.tsih, ident.initiator_name));
            let s = group.sessions.borrow().get(&ident.tsih).cloned().ok_or_else(gone)?;
            if !s.initiator.eq_ignore_ascii_case(&ident.initiator_name) || s.isid != ident.isid || s.target != ident.target_name {
                return Err(gone());
            }
            // Connection reinstatement: an old connection with this CID goes.
            for c in s.live_conns() {
                if c.st.borrow().cid == ident.cid {
                    c.close(Close::Protocol("connection reinstated".into()));
                }
            }
            if s.live_conns().len() as u32 >= s.params.max_connections {
                let why = format!("session {} has its {} connections (MaxConnections)", s.tsih, s.params.max_connections);
                return Err(refuse(status::TOO_MANY_CONNECTIONS, why));
            }
            s.conns.borrow_mut().push(Rc::downgrade(self));
            self.st.borrow_mut().session = Some(s.clone());
            return Ok(s.tsih);
        }
        // Session reinstatement: an older session of this initiator port goes.
        for (tsih, e) in session::find_same(&ident.initiator_name, &ident.isid, ident.target_name.as_deref()) {
            if e.reactor == reactor::current() {
                super::close_session(tsih);
            } else {
                reactor::send_msg(e.reactor, move || super::close_session(tsih));
            }
            session::unregister(tsih);
        }
        let (max_sessions, device) = {
            let cfg = config::lock();
            let dev = ident.target_name.as_deref().and_then(|t| cfg.target(t)).map(|t| t.device.clone());
            (cfg.options.max_sessions, dev)
        };
        if ident.session_type == SessionType::Normal && device.is_none() {
            return Err(refuse(status::NOT_FOUND, format!("target {} is gone", ident.target_name.as_deref().unwrap_or("-"))));
        }
        let entry = Entry {
            reactor: reactor::current(),
            initiator: ident.initiator_name.clone(),
            isid: ident.isid,
            target: ident.target_name.clone(),
            kind: ident.session_type,
        };
        let tsih = session::register(entry, max_sessions)
            .ok_or_else(|| refuse(status::OUT_OF_RESOURCES, format!("{max_sessions} sessions already (MaxSessions)")))?;
        let s = Session::new(
            tsih,
            ident.session_type,
            ident.initiator_name.clone(),
            ident.isid,
            ident.target_name.clone(),
            device,
            self.ep.portal_group,
            params,
            qd,
            cmd_sn,
        );
        s.conns.borrow_mut().push(Rc::downgrade(self));
        group.sessions.borrow_mut().insert(tsih, s.clone());
        self.st.borrow_mut().session = Some(s);
        tracing::info!(
            "iscsi: {} session {tsih} of {} ({}) to {}",
            if ident.session_type == SessionType::Normal { "normal" } else { "discovery" },
            ident.initiator_name,
            self.ep.peer,
            ident.target_name.as_deref().unwrap_or("-")
        );
        Ok(tsih)
    }

    /// Move this connection, before its first answer, to the reactor of the
    /// session it joins; `bytes` is the login PDU to replay there.
    fn hand_over(self: &Rc<Self>, to: reactor::ReactorId, bytes: Vec<u8>) {
        let stream = match self.stream.try_clone() {
            Ok(s) => s,
            Err(_) => return self.close(Close::Gone),
        };
        // Leave this reactor without shutting the socket down.
        self.closed.set(true);
        if let Some(g) = Group::try_get() {
            g.ready.remove(std::os::fd::AsRawFd::as_raw_fd(&self.stream));
            g.conns.borrow_mut().remove(&self.token);
        }
        let ep: Endpoint = self.ep.clone();
        let slot = self.take_slot();
        tracing::info!("iscsi: connection from {} joins session {} on {to}: moved from {}", ep.peer, h_tsih(&bytes), reactor::current());
        reactor::send_msg(to, move || super::start(stream, ep, bytes, slot));
    }
}

/// The TSIH of a raw Login Request.
fn h_tsih(raw: &[u8]) -> u16 {
    Bhs::parse(raw).map_or(0, |h| h.tsih())
}

/// Login Response status bytes (36-37).
trait LoginStatus {
    fn as_bytes_mut_status(&mut self, st: (u8, u8));
}

impl LoginStatus for Bhs {
    fn as_bytes_mut_status(&mut self, st: (u8, u8)) {
        self.w36.set(u32::from_be_bytes([st.0, st.1, 0, 0]));
    }
}
