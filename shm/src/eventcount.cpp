#include "shmbus/eventcount.hpp"

#include <linux/futex.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <ctime>

namespace shmbus {

int futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::chrono::nanoseconds timeout) {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout.count() >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
    tsp = &ts;
  }
  // A shared futex (no FUTEX_PRIVATE_FLAG): the kernel keys it by the page, so waiters and wakers in
  // different processes that map the same file meet on it. The relative timeout is CLOCK_MONOTONIC.
  const long rc =
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, tsp, nullptr, 0);
  return rc == 0 ? 0 : -errno;
}

int futex_wake(std::atomic<std::uint32_t>* word, int count) {
  const long rc =
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, count, nullptr, nullptr, 0);
  return rc < 0 ? -errno : static_cast<int>(rc);
}

void EventCount::init(EventCountShared* shared) noexcept {
  shared->seq.store(0, std::memory_order_relaxed);
  shared->futex_sleepers.store(0, std::memory_order_relaxed);
  shared->fd_sleepers.store(0, std::memory_order_relaxed);
  shared->wakes.store(0, std::memory_order_relaxed);
  shared->woken.store(0, std::memory_order_relaxed);  // seq 0: disarmed, nobody to wake
}

void EventCount::notify_slow() noexcept {
  bool woke = false;
  if (table_ != nullptr || s_->futex_sleepers.load(std::memory_order_relaxed) != 0) {
    // N3b: relaxed, after N2's fence (notify(), or the caller of notify_fenced()). A clear bit whose
    // FUTEX_WAKE was made (woken == v): every waiter that armed was woken already (see "Armed").
    std::uint32_t v = s_->seq.load(std::memory_order_relaxed);
    for (;;) {
      if ((v & kArmed) != 0) {
        // N4: the bump (and clear) makes a concurrent FUTEX_WAIT with an older key return at once (pairs
        // with W2); seq_cst so that a later W2 reading from it sees this notifier's data (N1).
        if (!s_->seq.compare_exchange_weak(v, (v + 2) & ~kArmed, std::memory_order_seq_cst,
                                           std::memory_order_relaxed))
          continue;
        v = (v + 2) & ~kArmed;
      } else if (s_->woken.load(std::memory_order_acquire) == v) {
        break;  // the FUTEX_WAKE that follows the clear to v was made: every armed waiter was woken
      }
      // We cleared the bit, or whoever did has not made its FUTEX_WAKE yet (it may be preempted, stopped
      // or killed between its CAS and the syscall: see "Stopped and dead notifiers"): wake for it.
      futex_wake(&s_->seq, INT_MAX);
      s_->woken.store(v, std::memory_order_release);  // after the wake: pairs with the load above
      woke = true;
      break;
    }
  }
  if (notify_fd_ >= 0 && s_->fd_sleepers.load(std::memory_order_relaxed) != 0) {
    const std::uint64_t one = 1;
    // EAGAIN (counter saturated) still leaves the fd readable; nothing else can fail on a valid eventfd.
    [[maybe_unused]] ssize_t n = ::write(notify_fd_, &one, sizeof one);
    woke = true;
  }
  if (woke) s_->wakes.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
}

bool EventCount::wait(std::uint32_t key, std::chrono::nanoseconds timeout) noexcept {
  const int rc = futex_wait(&s_->seq, key, timeout);
  withdraw();
  return rc != -ETIMEDOUT;
}

WaiterRecord* WaiterTable::claim(std::uint64_t me, std::uint32_t* index) const noexcept {
  // A record this process holds already (another thread or handle claimed it) comes first; it may not
  // be covered yet if that claimer is between A and B, so cover it here too.
  for (std::uint32_t i = 0; i < capacity; ++i)
    if (records[i].owner.load(std::memory_order_seq_cst) == me) {
      *index = i;
      return cover(i) ? &records[i] : nullptr;
    }
  for (std::uint32_t i = 0; i < capacity; ++i) {
    std::uint64_t expected = 0;
    // A: seq_cst (see "The mark"); it also pairs with the supervisor's release store that freed the
    // record after zeroing its lanes.
    if (records[i].owner.load(std::memory_order_relaxed) != 0 ||
        !records[i].owner.compare_exchange_strong(expected, me, std::memory_order_seq_cst))
      continue;
    *index = i;
    return cover(i) ? &records[i] : nullptr;  // a record not covered stays ours: the next wait retries
  }
  return nullptr;
}

bool WaiterTable::cover(std::uint32_t index) const noexcept {
  for (int attempt = 0; attempt < 100000; ++attempt) {
    std::uint32_t m = hwm->load(std::memory_order_seq_cst);  // B
    if (m & kLowering) {
      __builtin_ia32_pause();  // the supervisor holds it for a few loads and one store
      continue;
    }
    if (m >= index + 1) return true;
    if (hwm->compare_exchange_weak(m, index + 1, std::memory_order_seq_cst)) return true;
  }
  return false;
}

std::uint32_t WaiterTable::lower() const noexcept {
  std::uint32_t lowered = 0;
  for (;;) {
    std::uint32_t h = hwm->load(std::memory_order_seq_cst);
    if ((h & kLowering) != 0 || h == 0 || h > capacity) return lowered;
    if (records[h - 1].owner.load(std::memory_order_seq_cst) != 0) return lowered;
    if (!hwm->compare_exchange_strong(h, h | kLowering, std::memory_order_seq_cst)) continue;  // C
    if (records[h - 1].owner.load(std::memory_order_seq_cst) == 0) {                           // D
      hwm->store(h - 1, std::memory_order_seq_cst);                                            // E
      ++lowered;
    } else {
      hwm->store(h, std::memory_order_seq_cst);  // claimed meanwhile: unlock, keep the mark
      return lowered;
    }
  }
}

void WaiterTable::clear_lock() const noexcept {
  hwm->fetch_and(~kLowering, std::memory_order_seq_cst);
}

std::uint32_t EventCount::forget(WaiterRecord& record) noexcept {
  std::uint32_t n = 0;
  // Relaxed: the owner is dead, and its exit (seen through a pidfd or /proc) ordered every store it made.
  for (auto& lane : record.waiting) n += lane.exchange(0, std::memory_order_relaxed);
  // Release: whoever claims the record next (acq_rel CAS) sees its lanes zeroed.
  record.owner.store(0, std::memory_order_release);
  return n;
}

void EventCount::reset_sleepers() noexcept {
  s_->futex_sleepers.store(0, std::memory_order_relaxed);
  s_->fd_sleepers.store(0, std::memory_order_relaxed);
}

Result<EventFdWaiter> EventFdWaiter::create() {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return Error::from_errno(errno, "eventfd");
  return EventFdWaiter(fd);
}

EventFdWaiter& EventFdWaiter::operator=(EventFdWaiter&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

EventFdWaiter::~EventFdWaiter() {
  if (fd_ >= 0) ::close(fd_);
}

bool EventFdWaiter::wait(std::chrono::nanoseconds timeout) noexcept {
  pollfd p{fd_, POLLIN, 0};
  const long ms = timeout.count() < 0 ? -1 : static_cast<long>((timeout.count() + 999'999) / 1'000'000);
  return ::poll(&p, 1, static_cast<int>(ms > INT_MAX ? INT_MAX : ms)) > 0;
}

std::uint64_t EventFdWaiter::consume() noexcept {
  std::uint64_t v = 0;
  if (::read(fd_, &v, sizeof v) != static_cast<ssize_t>(sizeof v)) return 0;
  return v;
}

}  // namespace shmbus
