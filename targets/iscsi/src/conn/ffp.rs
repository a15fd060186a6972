//! Full feature phase: NOP-Out/In, Text (SendTargets), Logout, the
//! command window, and Rejects for what is not understood (Task
//! Management is in `tmf.rs`).

use std::rc::Rc;

use super::{Close, Conn};
use crate::config;
use crate::login::SessionType;
use crate::pdu::{Bhs, RESERVED_TAG, op, reject};
use crate::session::Session;
use crate::text;

/// Largest text request we reassemble from several PDUs.
const MAX_TEXT_REQUEST: usize = 64 * 1024;

/// What the command window says about a CmdSN.
pub(super) enum Window {
    /// Expected: go ahead.
    Accept,
    /// Outside the window or a duplicate: ignore silently.
    Ignore,
}

impl Conn {
    /// A fresh target transfer tag (never the reserved value).
    pub(super) fn take_ttt(&self) -> u32 {
        let mut st = self.st.borrow_mut();
        let t = st.next_ttt;
        st.next_ttt = st.next_ttt.wrapping_add(1).max(1);
        if st.next_ttt == RESERVED_TAG {
            st.next_ttt = 1;
        }
        t
    }

    pub(super) fn session(&self) -> Option<Rc<Session>> {
        self.st.borrow().session.clone()
    }

    /// Check (and for non-immediate commands, advance) the command window.
    pub(super) fn window(&self, h: &Bhs) -> Window {
        let Some(s) = self.session() else { return Window::Ignore };
        let sn = h.w24.get();
        if h.immediate() {
            return Window::Accept;
        }
        let exp = s.exp_cmd_sn.get();
        let max = s.max_cmd_sn.get();
        if Session::sn_lt(sn, exp) || Session::sn_lt(max, sn) {
            tracing::debug!("iscsi: CmdSN {sn} outside [{exp}, {max}]: ignored");
            return Window::Ignore;
        }
        let mut ahead = s.ahead.borrow_mut();
        if sn != exp {
            // Ahead of a command still on its way on another connection of
            // the session: taken, and ExpCmdSN waits for that one (moving
            // it past the gap made the earlier command look like a
            // duplicate, and it was dropped unanswered).
            if ahead.contains(&sn) {
                tracing::debug!("iscsi: CmdSN {sn} again: ignored");
                return Window::Ignore;
            }
            ahead.push(sn);
            return Window::Accept;
        }
        let mut next = sn.wrapping_add(1);
        while let Some(i) = ahead.iter().position(|&a| a == next) {
            ahead.swap_remove(i);
            next = next.wrapping_add(1);
        }
        s.exp_cmd_sn.set(next);
        Window::Accept
    }

    pub(super) fn on_ffp_pdu(self: &Rc<Self>, h: &Bhs, _ahs: &[u8], data: &[u8]) -> Result<bool, Close> {
        let discovery = self.session().is_some_and(|s| s.kind == SessionType::Discovery);
        match h.opcode() {
            op::NOP_OUT => self.on_nop_out(h, data),
            op::SCSI_CMD if discovery => {
                self.reject(h, reject::PROTOCOL_ERROR);
                Ok(true)
            }
            op::SCSI_CMD => self.on_scsi_cmd(h, data),
            op::DATA_OUT => self.on_data_out(h, data),
            op::TASK_MGMT if discovery => {
                self.reject(h, reject::PROTOCOL_ERROR);
                Ok(true)
            }
            op::TASK_MGMT => self.on_tmf(h),
            op::TEXT => self.on_text(h, data),
            op::LOGOUT => self.on_logout(h),
            op::LOGIN => {
                // A Login Request in full feature phase is a protocol error.
                self.reject(h, reject::PROTOCOL_ERROR);
                Err(Close::AfterFlush)
            }
            op::SNACK => {
                // ErrorRecoveryLevel 0: no SNACK.
                self.reject(h, reject::COMMAND_NOT_SUPPORTED);
                Ok(true)
            }
            _ => {
                self.reject(h, reject::COMMAND_NOT_SUPPORTED);
                Ok(true)
            }
        }
    }

    fn on_nop_out(self: &Rc<Self>, h: &Bhs, data: &[u8]) -> Result<bool, Close> {
        let itt = h.itt();
        let ttt = h.w20.get();
        if itt == RESERVED_TAG {
            // An answer to our ping (or a bare ping that wants no answer).
            let mut st = self.st.borrow_mut();
            if st.ping.is_some_and(|(t, _)| t == ttt) {
                st.ping = None;
            }
            if !h.immediate() {
                drop(st);
                if let Window::Ignore = self.window(h) {
                    return Ok(true);
                }
            }
            return Ok(true);
        }
        if ttt != RESERVED_TAG {
            self.reject(h, reject::PROTOCOL_ERROR);
            return Ok(true);
        }
        if let Window::Ignore = self.window(h) {
            return Ok(true);
        }
        let max = self.st.borrow().params.max_send_seg as usize;
        let echo = &data[..data.len().min(max)];
        let mut r = Bhs::new(op::NOP_IN, 0x80);
        r.lun = h.lun;
        r.itt.set(itt);
        r.w20.set(RESERVED_TAG);
        r.w24.set(self.next_stat_sn());
        self.fill_window(&mut r);
        self.send(&mut r, &[echo]);
        self.st.borrow_mut().ping = None;
        Ok(true)
    }

    fn on_text(self: &Rc<Self>, h: &Bhs, data: &[u8]) -> Result<bool, Close> {
        if let Window::Ignore = self.window(h) {
            return Ok(true);
        }
        let ttt = h.w20.get();
        let max = self.st.borrow().params.max_send_seg as usize;
        // Text split over several requests (C bit, RFC 7143 11.10.2): keep
        // what came, answer each piece with an empty response whose TTT the
        // initiator sends back with the next piece.
        let incoming = {
            let mut st = self.st.borrow_mut();
            match st.text_in.take() {
                Some((t, itt, b)) if t == ttt && itt == h.itt() => Some(b),
                // A new request (reserved TTT) drops an unfinished one.
                other => {
                    st.text_in = if ttt == RESERVED_TAG { None } else { other };
                    None
                }
            }
        };
        let continued = incoming.is_some();
        if h.flags & 0x40 != 0 {
            if h.is_final() {
                // C and F together are a protocol error.
                self.reject(h, reject::PROTOCOL_ERROR);
                return Ok(true);
            }
            let mut buf = incoming.unwrap_or_default();
            if buf.len() + data.len() > MAX_TEXT_REQUEST {
                self.reject(h, reject::PROTOCOL_ERROR);
                return Ok(true);
            }
            buf.extend_from_slice(data);
            let t = self.take_ttt();
            self.st.borrow_mut().text_in = Some((t, h.itt(), buf));
            let mut r = Bhs::new(op::TEXT_RESP, 0);
            r.itt.set(h.itt());
            r.w20.set(t);
            r.w24.set(self.next_stat_sn());
            self.fill_window(&mut r);
            self.send(&mut r, &[]);
            return Ok(true);
        }
        let body = if ttt != RESERVED_TAG && !continued {
            // Continuation of a long answer.
            let rest = self.st.borrow_mut().text_rest.take();
            match rest {
                Some((t, itt, b)) if t == ttt && itt == h.itt() => b,
                _ => {
                    self.reject(h, reject::INVALID_PDU_FIELD);
                    return Ok(true);
                }
            }
        } else {
            let whole;
            let text_data = match incoming {
                Some(mut b) if b.len() + data.len() <= MAX_TEXT_REQUEST => {
                    b.extend_from_slice(data);
                    whole = b;
                    &whole[..]
                }
                Some(_) => {
                    self.reject(h, reject::PROTOCOL_ERROR);
                    return Ok(true);
                }
                None => data,
            };
            let pairs = match text::parse(text_data) {
                Ok(p) => p,
                Err(_) => {
                    self.reject(h, reject::PROTOCOL_ERROR);
                    return Ok(true);
                }
            };
            let mut out = Vec::new();
            for (k, v) in &pairs {
                if k == "SendTargets" {
                    self.send_targets(v, &mut out);
                } else {
                    text::push(&mut out, k, "NotUnderstood");
                }
            }
            out
        };
        let (now, rest) = if body.len() > max {
            // Cut at a pair boundary when possible.
            let cut = body[..max].iter().rposition(|&b| b == 0).map_or(max, |p| p + 1);
            (body[..cut].to_vec(), Some(body[cut..].to_vec()))
        } else {
            (body, None)
        };
        let mut r = Bhs::new(op::TEXT_RESP, if rest.is_some() { 0x40 } else { 0x80 });
        r.itt.set(h.itt());
        let t = match rest {
            Some(b) => {
                let t = self.take_ttt();
                self.st.borrow_mut().text_rest = Some((t, h.itt(), b));
                t
            }
            None => RESERVED_TAG,
        };
        r.w20.set(t);
        r.w24.set(self.next_stat_sn());
        self.fill_window(&mut r);
        self.send(&mut r, &[&now]);
        Ok(true)
    }

    /// SendTargets: every target this initiator may see, with the portals
    /// of its public portal groups.
    fn send_targets(&self, what: &str, out: &mut Vec<u8>) {
        let Some(s) = self.session() else { return };
        let cfg = config::lock();
        let discovery = s.kind == SessionType::Discovery;
        for t in &cfg.targets {
            let wanted = match what {
                "All" => discovery,
                "" => s.target.as_deref() == Some(t.name.as_str()),
                name => name.eq_ignore_ascii_case(&t.name),
            };
            // Only targets reachable through the portal group this
            // connection came in on, and that this initiator may see.
            if !wanted || !cfg.allowed(t, self.ep.portal_group, &s.initiator, &self.ep.peer.ip()) {
                continue;
            }
            let mut addrs = Vec::new();
            for &(pg, _) in &t.pg_ig_maps {
                let Some(g) = cfg.portal_groups.get(&pg) else { continue };
                if g.private || !cfg.allowed(t, pg, &s.initiator, &self.ep.peer.ip()) {
                    continue;
                }
                for p in &g.portals {
                    let host = if p.host == "0.0.0.0" || p.host == "[::]" || p.host == "::" {
                        self.ep.local.ip().to_string()
                    } else {
                        p.host.clone()
                    };
                    let a = format!("{host}:{},{pg}", p.port);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
            if addrs.is_empty() {
                continue;
            }
            text::push(out, "TargetName", &t.name);
            for a in addrs {
                text::push(out, "TargetAddress", &a);
            }
        }
    }

    fn on_logout(self: &Rc<Self>, h: &Bhs) -> Result<bool, Close> {
        if let Window::Ignore = self.window(h) {
            return Ok(true);
        }
        let reason = h.flags & 0x7f;
        let cid = h.cid();
        let s = self.session();
        let my_cid = self.st.borrow().cid;
        let (response, close_session, close_me) = match reason {
            0 => (0, true, true),
            1 if cid == my_cid => (0, false, true),
            1 => {
                let other = s.as_ref().and_then(|s| s.live_conns().into_iter().find(|c| c.st.borrow().cid == cid));
                match other {
                    Some(c) => {
                        c.close(Close::Protocol("logged out by another connection".into()));
                        (0, false, false)
                    }
                    None => (1, false, false),
                }
            }
            2 => (2, false, false),
            _ => {
                self.reject(h, reject::INVALID_PDU_FIELD);
                return Ok(true);
            }
        };
        let mut r = Bhs::new(op::LOGOUT_RESP, 0x80);
        r.b2 = response;
        r.itt.set(h.itt());
        r.w24.set(self.next_stat_sn());
        self.fill_window(&mut r);
        let (t2w, t2r) = {
            let p = self.st.borrow().params;
            (p.default_time2wait as u16, p.default_time2retain as u16)
        };
        r.w40.set(((t2w as u32) << 16) | t2r as u32);
        self.send(&mut r, &[]);
        if close_session {
            if let Some(s) = s {
                for c in s.live_conns() {
                    if !Rc::ptr_eq(&c, self) {
                        c.close(Close::Protocol("session logged out".into()));
                    }
                }
            }
        }
        if close_me {
            return Err(Close::AfterFlush);
        }
        Ok(true)
    }
}
