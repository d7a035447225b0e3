//! The Objective-C edge: an `OSSystemExtensionRequestDelegate` whose callbacks (on a private
//! dispatch queue) turn into `outcome::Event`s on a channel, and the submission of the request.
//! The main thread waits on that channel with the request's time limit.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use dispatch2::DispatchQueue;
use objc2::rc::Retained;
use objc2::runtime::ProtocolObject;
use objc2::{AllocAnyThread, DefinedClass, define_class, msg_send};
use objc2_foundation::{NSError, NSObject, NSObjectProtocol, NSString};
use objc2_system_extensions::{
    OSSystemExtensionManager, OSSystemExtensionProperties, OSSystemExtensionReplacementAction,
    OSSystemExtensionRequest, OSSystemExtensionRequestDelegate, OSSystemExtensionRequestResult,
};

use crate::outcome::{self, Action, Args, Event, Exit, Replacement};

/// What the delegate sends the waiting main thread.
#[derive(Debug)]
enum Note {
    Event(Event),
    /// A line to print that does not change the state (the replacement decision).
    Line(String),
}

#[derive(Debug)]
struct Ivars {
    tx: Sender<Note>,
}

define_class!(
    // SAFETY: NSObject has no subclassing requirements; the class adds no Drop-sensitive state
    // beyond its ivars, which objc2 drops with the object.
    #[unsafe(super(NSObject))]
    #[name = "GatehouseExtensionRequestDelegate"]
    #[ivars = Ivars]
    #[derive(Debug)]
    struct Delegate;

    // SAFETY: NSObjectProtocol's methods are inherited from NSObject.
    unsafe impl NSObjectProtocol for Delegate {}

    // SAFETY: each method's selector and signature match OSSystemExtensionRequestDelegate's
    // declaration (objc2-system-extensions' generated binding, which these mirror).
    unsafe impl OSSystemExtensionRequestDelegate for Delegate {
        #[unsafe(method(request:actionForReplacingExtension:withExtension:))]
        fn action_for_replacing(
            &self,
            _request: &OSSystemExtensionRequest,
            existing: &OSSystemExtensionProperties,
            ext: &OSSystemExtensionProperties,
        ) -> OSSystemExtensionReplacementAction {
            let (decision, line) = outcome::replacement(&version(existing), &version(ext));
            let _ = self.ivars().tx.send(Note::Line(line));
            match decision {
                Replacement::Replace => OSSystemExtensionReplacementAction::Replace,
            }
        }

        #[unsafe(method(requestNeedsUserApproval:))]
        fn needs_user_approval(&self, _request: &OSSystemExtensionRequest) {
            let _ = self.ivars().tx.send(Note::Event(Event::NeedsUserApproval));
        }

        #[unsafe(method(request:didFinishWithResult:))]
        fn did_finish(
            &self,
            _request: &OSSystemExtensionRequest,
            result: OSSystemExtensionRequestResult,
        ) {
            let _ = self.ivars().tx.send(Note::Event(Event::Finished {
                result: result.0 as i64,
            }));
        }

        #[unsafe(method(request:didFailWithError:))]
        fn did_fail(&self, _request: &OSSystemExtensionRequest, error: &NSError) {
            let event = Event::Failed {
                domain: error.domain().to_string(),
                code: error.code() as i64,
                description: error.localizedDescription().to_string(),
            };
            let _ = self.ivars().tx.send(Note::Event(event));
        }
    }
);

impl Delegate {
    fn new(tx: Sender<Note>) -> Retained<Self> {
        let this = Self::alloc().set_ivars(Ivars { tx });
        // SAFETY: NSObject's designated initializer on a freshly allocated instance.
        unsafe { msg_send![super(this), init] }
    }
}

/// `1.2 (7)`: the short version and the build.
fn version(p: &OSSystemExtensionProperties) -> String {
    // SAFETY: plain property getters on a valid properties object the system passed us.
    let (short, build) = unsafe { (p.bundleShortVersion(), p.bundleVersion()) };
    format!("{short} ({build})")
}

/// Submit the request and wait for its end; prints every step on stdout (failures on stderr).
pub fn submit(args: Args, bundle_id: &str) -> Exit {
    let (tx, rx) = channel();
    let queue = DispatchQueue::new("dev.gatehouse.app.requests", None);
    let id = NSString::from_str(bundle_id);
    // SAFETY: the queue is a serial queue we own and keep alive until the end of this function,
    // which outlives every callback we wait for; the identifier is a valid NSString.
    let request = unsafe {
        match args.action {
            Action::Activate => {
                OSSystemExtensionRequest::activationRequestForExtension_queue(&id, &queue)
            }
            Action::Deactivate => {
                OSSystemExtensionRequest::deactivationRequestForExtension_queue(&id, &queue)
            }
        }
    };
    let delegate = Delegate::new(tx);
    // SAFETY: `delegate` is retained here until after the wait below; the request holds it
    // weakly, as Apple documents.
    unsafe {
        request.setDelegate(Some(ProtocolObject::from_ref(&*delegate)));
        OSSystemExtensionManager::sharedManager().submitRequest(&request);
    }
    let exit = wait(args, &rx);
    drop(delegate);
    exit
}

fn wait(args: Args, rx: &Receiver<Note>) -> Exit {
    let start = Instant::now();
    let mut approval_pending = false;
    loop {
        let left = args.wait.saturating_sub(start.elapsed());
        let note = match rx.recv_timeout(left) {
            Ok(n) => n,
            Err(_) => {
                let s = outcome::timed_out(args.action, approval_pending, args.wait);
                eprintln!("Gatehouse: {}", s.line);
                return s.exit.unwrap_or(Exit::Failed);
            }
        };
        match note {
            Note::Line(l) => println!("Gatehouse: {l}"),
            Note::Event(e) => {
                approval_pending |= e == Event::NeedsUserApproval;
                let s = outcome::step(args.action, &e);
                match s.exit {
                    Some(Exit::Failed) => eprintln!("Gatehouse: {}", s.line),
                    _ => println!("Gatehouse: {}", s.line),
                }
                if let Some(exit) = s.exit {
                    return exit;
                }
            }
        }
    }
}

/// `Gatehouse notify`: the notifier agent. Long-polls the extension's block-notice service
/// (system bootstrap; the peer must be our extension) and posts each answer's notifications.
/// Runs until killed (launchd keeps it alive); a missing or restarting extension only backs
/// the loop off. A build without a team has no service to reach.
pub fn notify() -> Exit {
    use crate::notifier::{Poller, REPLY_TIMEOUT};
    use objc2_user_notifications::{UNAuthorizationOptions, UNUserNotificationCenter};
    use protocol::frame::{decode_whole_frame, encode_frame};
    use protocol::{NOTICE_MAX_FRAME, NoticeBatch};
    use xpc::{ConnectOptions, Connection, FrameKind};

    let Some(team) = defaults::TEAM_ID else {
        eprintln!(
            "Gatehouse: this build has no team id (GATEHOUSE_TEAM_ID), so the extension serves no block notices"
        );
        return Exit::Failed;
    };
    let service = defaults::macos::extension_mach_service(team);
    let conn = match Connection::connect(
        &service,
        DispatchQueue::new("dev.gatehouse.app.notices", None),
        ConnectOptions {
            privileged: true,
            peer_requirement: Some(defaults::extension_requirement(team)),
            on_error: None,
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Gatehouse: cannot connect to {service}: {e}");
            return Exit::Failed;
        }
    };
    let center = UNUserNotificationCenter::currentNotificationCenter();
    let asked = block2::RcBlock::new(|granted: objc2::runtime::Bool, _err: *mut NSError| {
        if !granted.as_bool() {
            eprintln!(
                "Gatehouse: notifications are not allowed for Gatehouse; allow them in System Settings > Notifications"
            );
        }
    });
    center.requestAuthorizationWithOptions_completionHandler(
        UNAuthorizationOptions::Alert | UNAuthorizationOptions::Sound,
        &asked,
    );
    let mut poller = Poller::default();
    loop {
        let answer = match encode_frame(&poller.request(), NOTICE_MAX_FRAME) {
            Ok(frame) => {
                let (tx, rx) = channel();
                conn.send_with_reply(FrameKind::Notice, &frame, REPLY_TIMEOUT, move |r| {
                    let _ = tx.send(r);
                });
                // The callback runs exactly once (reply, error or timeout), so this returns.
                match rx.recv() {
                    Ok(Ok((Some(FrameKind::Notice), bytes))) => {
                        decode_whole_frame::<NoticeBatch>(&bytes, NOTICE_MAX_FRAME)
                            .map_err(|e| e.to_string())
                    }
                    Ok(Ok((kind, _))) => Err(format!("unexpected reply kind {kind:?}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("the reply callback was dropped".to_owned()),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let next = poller.answered(answer);
        for n in &next.show {
            post(&center, n);
        }
        std::thread::sleep(next.delay);
    }
}

/// Posts one notification now (no trigger); a refusal (notifications off) is not retried.
fn post(
    center: &objc2_user_notifications::UNUserNotificationCenter,
    n: &crate::notifier::Notification,
) {
    use objc2_user_notifications::{UNMutableNotificationContent, UNNotificationRequest};
    let content = UNMutableNotificationContent::new();
    content.setTitle(&NSString::from_str(&n.title));
    content.setBody(&NSString::from_str(&n.body));
    let request = UNNotificationRequest::requestWithIdentifier_content_trigger(
        &NSString::from_str(&n.id),
        &content,
        None,
    );
    center.addNotificationRequest_withCompletionHandler(&request, None);
}
