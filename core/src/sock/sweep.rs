//! What a group's periodic timer visits, gathered into a list it keeps.

use std::cell::RefCell;

/// The list a group's periodic timer (idle, login and keep-alive
/// timeouts) gathers the objects it visits into, kept for its capacity:
/// once it has held as many as the group has had, a visit allocates
/// nothing. The objects are gathered first and visited after, so a visit
/// may change the collection they came from (close a connection, which
/// takes it out); and the list is emptied after, so it holds nothing
/// alive between visits.
pub struct Sweep<T> {
    kept: RefCell<Vec<T>>,
}

impl<T> Default for Sweep<T> {
    fn default() -> Self {
        Sweep { kept: RefCell::new(Vec::new()) }
    }
}

impl<T> Sweep<T> {
    /// `gather` fills the list (borrows it takes end when it returns),
    /// then `visit` sees each object in turn.
    pub fn run(&self, gather: impl FnOnce(&mut Vec<T>), mut visit: impl FnMut(&T)) {
        let mut list = std::mem::take(&mut *self.kept.borrow_mut());
        gather(&mut list);
        for x in &list {
            visit(x);
        }
        list.clear();
        *self.kept.borrow_mut() = list;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn a_sweep_keeps_its_list_and_a_visit_may_change_the_source() {
        let source = RefCell::new(vec![Rc::new(1), Rc::new(2), Rc::new(3)]);
        let sweep = Sweep::default();
        let mut seen = Vec::new();
        sweep.run(
            |l| l.extend(source.borrow().iter().cloned()),
            |x| {
                seen.push(**x);
                source.borrow_mut().retain(|y| !Rc::ptr_eq(x, y));
            },
        );
        assert_eq!(seen, [1, 2, 3]);
        assert!(source.borrow().is_empty(), "each visit took its object out of the source");
        let kept = |s: &Sweep<Rc<i32>>| (s.kept.borrow().as_ptr(), s.kept.borrow().capacity(), s.kept.borrow().len());
        let (at, room, len) = kept(&sweep);
        assert!(room >= 3 && len == 0, "kept, and empty between visits");
        let one = Rc::new(4);
        sweep.run(|l| l.extend([one.clone(), Rc::new(5)]), |_| {});
        assert_eq!(kept(&sweep), (at, room, 0), "the same list again");
        assert_eq!(Rc::strong_count(&one), 1, "nothing is held after a visit");
    }
}
