//! The training engine shared by the toy experiments ([`crate::experiment`]) and `fullbatch
//! train` (`deep::run`): a [`Stepper`] advances the training state one step at a time and
//! returns the step's record (a log line); [`Observer`]s run before and after each step, in
//! order, to time it, evaluate, measure, log, checkpoint or stop the run. A new measurement is a
//! new observer, not an edit to a training loop.
//!
//! ```
//! use fullbatch::engine::{Control, Observer, Stepper, drive};
//!
//! /// Gradient descent on L(x) = x^2 / 2 from x = 1 with step 0.5: x halves each step.
//! struct Halving { x: f64 }
//! impl Stepper for Halving {
//!     type Record = f64;
//!     fn step(&mut self, _t: usize) -> fullbatch::Result<f64> {
//!         self.x -= 0.5 * self.x;
//!         Ok(self.x)
//!     }
//! }
//! /// Stops once x is below a threshold.
//! struct Below(f64);
//! impl Observer<Halving> for Below {
//!     fn after_step(&mut self, _s: &mut Halving, done: usize, x: &mut f64) -> fullbatch::Result<Control> {
//!         Ok(if *x < self.0 { Control::Stop(format!("below at step {done}")) } else { Control::Continue })
//!     }
//! }
//! let mut s = Halving { x: 1.0 };
//! let end = drive(&mut s, 0, 100, &mut [&mut Below(0.1)]);
//! assert_eq!(end.steps_done, 4); // 0.5, 0.25, 0.125, 0.0625
//! assert_eq!(end.result.unwrap(), Control::Stop("below at step 4".into()));
//! ```

use crate::Result;

/// What an observer asks for after a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Go on with the next step.
    Continue,
    /// End the run after this step, for the reason given.
    Stop(String),
}

/// A training process that advances one step at a time.
pub trait Stepper {
    /// What one step produces for the observers to read and fill (a log line).
    type Record;

    /// Performs step `t` (0-based: the state goes from `t` to `t + 1` steps done) and returns
    /// its record.
    ///
    /// # Errors
    /// Whatever ends the run: a failed computation, a divergence.
    fn step(&mut self, t: usize) -> Result<Self::Record>;
}

/// Work done around each step of a [`Stepper`].
pub trait Observer<S: Stepper> {
    /// Before step `t` (0-based). Nothing by default.
    ///
    /// # Errors
    /// Whatever ends the run.
    fn before_step(&mut self, _stepper: &mut S, _t: usize) -> Result<()> {
        Ok(())
    }

    /// After the step that made `done` steps, with its record (which it may fill).
    ///
    /// # Errors
    /// Whatever ends the run.
    fn after_step(&mut self, stepper: &mut S, done: usize, record: &mut S::Record) -> Result<Control>;
}

/// How [`drive`] ended.
#[derive(Debug)]
pub struct DriveEnd {
    /// Steps done when it ended (`start` plus the steps whose observers all ran).
    pub steps_done: usize,
    /// `Ok(Continue)` when `end` was reached, `Ok(Stop(reason))` when an observer stopped the
    /// run, or the error of the stepper or an observer.
    pub result: Result<Control>,
}

/// Runs steps `start..end` of `stepper`; around each, `observers` in order (`before_step`, the
/// step, `after_step`). Every observer sees every step that completed, also the one after which
/// one of them asked to stop; the first error ends the run at once.
pub fn drive<S: Stepper>(
    stepper: &mut S,
    start: usize,
    end: usize,
    observers: &mut [&mut dyn Observer<S>],
) -> DriveEnd {
    let mut t = start;
    let result = (|| {
        while t < end {
            for o in observers.iter_mut() {
                o.before_step(stepper, t)?;
            }
            let mut record = stepper.step(t)?;
            let mut control = Control::Continue;
            for o in observers.iter_mut() {
                if let Control::Stop(reason) = o.after_step(stepper, t + 1, &mut record)?
                    && control == Control::Continue
                {
                    control = Control::Stop(reason);
                }
            }
            t += 1;
            if control != Control::Continue {
                return Ok(control);
            }
        }
        Ok(Control::Continue)
    })();
    DriveEnd { steps_done: t, result }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    struct Counter {
        fail_at: Option<usize>,
        steps: Vec<usize>,
    }
    impl Stepper for Counter {
        type Record = Vec<&'static str>;
        fn step(&mut self, t: usize) -> Result<Self::Record> {
            if self.fail_at == Some(t) {
                return Err(Error::Diverged { step: t, quantity: "count".into() });
            }
            self.steps.push(t);
            Ok(vec!["step"])
        }
    }
    struct Mark {
        name: &'static str,
        stop_after: Option<usize>,
        seen: Vec<String>,
    }
    impl Observer<Counter> for Mark {
        fn before_step(&mut self, _s: &mut Counter, t: usize) -> Result<()> {
            self.seen.push(format!("before {t}"));
            Ok(())
        }
        fn after_step(&mut self, _s: &mut Counter, done: usize, record: &mut Vec<&'static str>) -> Result<Control> {
            record.push(self.name);
            self.seen.push(format!("after {done}: {}", record.join(",")));
            Ok(if self.stop_after == Some(done) {
                Control::Stop(format!("{} at {done}", self.name))
            } else {
                Control::Continue
            })
        }
    }

    #[test]
    fn observers_run_in_order_around_every_step_and_all_see_the_stop_step() {
        let mut s = Counter { fail_at: None, steps: Vec::new() };
        let mut a = Mark { name: "a", stop_after: Some(3), seen: Vec::new() };
        let mut b = Mark { name: "b", stop_after: Some(3), seen: Vec::new() };
        let end = drive(&mut s, 1, 10, &mut [&mut a, &mut b]);
        assert_eq!(end.steps_done, 3);
        assert_eq!(end.result.unwrap(), Control::Stop("a at 3".into()), "the first stop's reason");
        assert_eq!(s.steps, [1, 2]);
        assert_eq!(a.seen, ["before 1", "after 2: step,a", "before 2", "after 3: step,a"]);
        assert_eq!(b.seen, ["before 1", "after 2: step,a,b", "before 2", "after 3: step,a,b"]);
    }

    #[test]
    fn the_end_and_errors_end_the_run() {
        let mut s = Counter { fail_at: None, steps: Vec::new() };
        let end = drive(&mut s, 0, 4, &mut []);
        assert_eq!((end.steps_done, end.result.unwrap()), (4, Control::Continue));
        let mut s = Counter { fail_at: Some(2), steps: Vec::new() };
        let mut a = Mark { name: "a", stop_after: None, seen: Vec::new() };
        let end = drive(&mut s, 0, 4, &mut [&mut a]);
        assert_eq!(end.steps_done, 2);
        assert!(matches!(end.result, Err(Error::Diverged { step: 2, .. })));
        assert_eq!(a.seen.last().map(String::as_str), Some("before 2"));
    }
}
