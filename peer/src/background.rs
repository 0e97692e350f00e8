//! A named thread that runs until it is told to stop: the heartbeat and the
//! folder watcher. Its body waits on a stop channel that never carries a
//! message; dropping the sender disconnects it, which wakes the thread at
//! once. Stopping (or dropping) a [`Background`] does that and joins it.

use std::io;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

/// One background thread and the way to stop it.
#[derive(Debug)]
pub struct Background {
    /// Never sends: dropping it disconnects the thread's receiver.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Starts `body` on a thread named `name`; `body` returns once its
    /// receiver is disconnected.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(Receiver<()>) + Send + 'static,
    ) -> io::Result<Background> {
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(stopped))?;
        Ok(Background {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it to finish what it is doing.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop_now();
    }
}
