//! A small blocking client for the helper socket: connect, handshake, send requests (with a
//! descriptor attached when analysing a file), read answers. Used by `gatehouse-helper --probe`
//! and the end-to-end tests; the extension has its own non-blocking client.
#![forbid(unsafe_code)]

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use protocol::unix::{recv_frame, send_frame};
use protocol::{
    HELPER_MAX_FRAME, HelperRequest, HelperResponse, ProtocolError, Request, Response, Role,
    handshake,
};

/// One connection to a helper.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connect to `socket` and complete the handshake as `role`. Every later read and write
    /// times out after `timeout`, so a stuck helper cannot hang the caller.
    pub fn connect(socket: &Path, role: Role, timeout: Duration) -> Result<Self, ProtocolError> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        handshake::client(&mut &stream, role, "gatehouse-helper-client")?;
        Ok(Self { stream, next_id: 1 })
    }

    /// The underlying socket, for tests that write raw bytes.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Send one request with `budget` left before its deadline; returns its id.
    pub fn send(
        &mut self,
        body: HelperRequest,
        budget: Duration,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<u64, ProtocolError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            id,
            budget_us: u64::try_from(budget.as_micros()).unwrap_or(u64::MAX),
            body,
        };
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        send_frame(&self.stream, &req, &fds, HELPER_MAX_FRAME)?;
        Ok(id)
    }

    /// The next answer, whichever request it belongs to.
    pub fn recv(&self) -> Result<Response<HelperResponse>, ProtocolError> {
        let (resp, _fds) = recv_frame(&self.stream, HELPER_MAX_FRAME)?;
        Ok(resp)
    }

    /// Send one request and wait for its answer (answers to other ids are discarded).
    pub fn call(
        &mut self,
        body: HelperRequest,
        budget: Duration,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<HelperResponse, ProtocolError> {
        let id = self.send(body, budget, fd)?;
        loop {
            let resp = self.recv()?;
            if resp.id == id {
                return Ok(resp.body);
            }
        }
    }
}
