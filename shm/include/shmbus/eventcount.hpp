// EventCount: sleep until another process says "something changed", without a syscall on the
// notifier's side while nobody sleeps.
//
// The shared part (EventCountShared, one 128-byte line) holds a 32-bit futex word `seq` and two sleeper
// counts. A waiter announces itself (sleepers += 1, seq_cst), reads `seq`, re-checks its condition, and
// only then sleeps: in FUTEX_WAIT on `seq` (a shared futex: never FUTEX_PRIVATE_FLAG, never
// std::atomic::wait, which is process-private in libstdc++), or in epoll/poll on an eventfd
// (EventFdWaiter), so that one process can wait on many sources at once. A notifier publishes its data,
// issues a seq_cst fence and reads the sleeper counts: when both are zero it returns at once (no syscall);
// otherwise it bumps `seq` and calls FUTEX_WAKE and/or writes the eventfd it was given.
//
// Who calls what: any number of notifiers, from any process. Futex waiters: any number. eventfd waiters:
// one per EventCount (the notifier holds one descriptor); it must be handed to the notifier with
// set_notify_fd() (inherited over fork, or passed with SCM_RIGHTS by the broker).
//
// Memory ordering (no lost wake-up). Waiter: W1 sleepers.fetch_add (seq_cst) + W1' fence, W2 seq.load, W3
// re-check the condition, W4 sleep while seq == key. Notifier: N1 publish (release, in the caller), N2
// atomic_thread_fence(seq_cst), N3 sleepers.load, N4 seq.fetch_add + wake. The fences put W1 and N2 in one
// total order: if N3 reads 0, W1 came after N2, so W3 sees N1's data. If N3 reads a sleeper, N4 changes seq,
// and FUTEX_WAIT compares seq with the key atomically in the kernel, so W4 either does not sleep or is
// woken.
//
// Dead waiters. A waiter killed while counted would leave futex_sleepers high forever, and every notify
// would then make a needless FUTEX_WAKE (never a hang, but a syscall per message). Two cures:
//  - an EventCount that only one process waits on (a subscriber slot's) is reset by its supervisor once
//    that process is known dead (reset_sleepers());
//  - an EventCount that many processes wait on is used with an *account*: a 32-bit counter of the
//    waiting process's own, in shared memory (a topic's waiter records), that says how many of its
//    threads are counted in futex_sleepers now. The waiter adds to futex_sleepers first and to its
//    account second, and withdraws from its account first and from futex_sleepers second, so an account
//    never exceeds what its process contributes. Once the process is dead, its supervisor calls
//    forget(account): subtracting the frozen account removes only the dead process's own counts, never a
//    live waiter's (which would be a lost wake-up). A process killed in the one-instruction window
//    between the two steps of entry leaves one count behind: a needless syscall per notify, never a hang.
//    Account updates are relaxed: the supervisor reads an account only after the process is dead, and its
//    exit (seen through a pidfd or /proc) orders every store it made.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "shmbus/config.hpp"
#include "shmbus/result.hpp"

namespace shmbus {

struct alignas(kCacheLine) EventCountShared {
  std::atomic<std::uint32_t> seq;             // the futex word; bumped by a notifier that saw a sleeper
  std::atomic<std::uint32_t> futex_sleepers;  // waiters between W1 and the end of W4 (futex)
  std::atomic<std::uint32_t> fd_sleepers;     // the same, for the eventfd waiter
  std::atomic<std::uint32_t> wakes;           // syscalls made by notifiers (stats; relaxed)
};
static_assert(sizeof(EventCountShared) == kCacheLine);
static_assert(offsetof(EventCountShared, seq) == 0);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<EventCountShared>);

// Shared-futex syscalls. timeout < 0 waits forever. Returns 0, or -errno (-ETIMEDOUT, -EAGAIN, -EINTR).
int futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::chrono::nanoseconds timeout);
int futex_wake(std::atomic<std::uint32_t>* word, int count);

class EventCount {
 public:
  EventCount() = default;
  // `account`: this process's counter of its waiters on `shared` (see "Dead waiters"), or null when the
  // EventCount has one waiting process and its supervisor resets it instead.
  explicit EventCount(EventCountShared* shared, std::atomic<std::uint32_t>* account = nullptr)
      : s_(shared), account_(account) {}

  // Initialise the shared part in a fresh segment (creator only, before publish).
  static void init(EventCountShared* shared) noexcept;

  // --- notifier side ---------------------------------------------------------------------------------
  // Call after publishing with release. No syscall when nobody sleeps (N2, N3).
  void notify() noexcept {
    // N2: pairs with W1 in prepare_wait(); see the header comment.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // N3: relaxed is enough after the seq_cst fence, which orders this load against W1.
    if (s_->futex_sleepers.load(std::memory_order_relaxed) == 0 &&
        (notify_fd_ < 0 || s_->fd_sleepers.load(std::memory_order_relaxed) == 0))
      return;
    notify_slow();
  }
  // The eventfd that the (single) eventfd waiter of this EventCount sleeps on; -1 for none.
  void set_notify_fd(int fd) noexcept { notify_fd_ = fd; }

  // --- futex waiter side -----------------------------------------------------------------------------
  // W1 + W2: announce, then return the key to pass to wait().
  std::uint32_t prepare_wait() noexcept {
    s_->futex_sleepers.fetch_add(1, std::memory_order_seq_cst);                  // W1: pairs with N2.
    if (account_ != nullptr) account_->fetch_add(1, std::memory_order_relaxed);  // after W1: see header
    // W1': the fence orders W1 before the caller's re-check (W3), which is usually an acquire load; a
    // seq_cst RMW alone does not order later non-seq_cst loads in the C++ model (free on x86: the RMW
    // is a full barrier already).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return s_->seq.load(std::memory_order_seq_cst);  // W2: pairs with N4's fetch_add.
  }
  // The condition came true during W3: withdraw.
  void cancel_wait() noexcept { withdraw(); }
  // W4: sleep until seq != key, a wake, or the timeout; then withdraw. Returns false on timeout.
  bool wait(std::uint32_t key, std::chrono::nanoseconds timeout) noexcept;

  // Spin `spin` iterations, then park, until ready() or the timeout. Returns ready()'s last value.
  template <typename Ready>
  bool await(Ready&& ready, std::chrono::nanoseconds timeout, std::uint32_t spin = 0) noexcept {
    if (ready()) return true;  // before the clock read: ~0.3 ns instead of ~24 ns when data is waiting
    for (std::uint32_t i = 0; i < spin; ++i) {
      if (ready()) return true;
      __builtin_ia32_pause();
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (ready()) return true;
      const std::uint32_t key = prepare_wait();
      if (ready()) {  // W3
        cancel_wait();
        return true;
      }
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds::zero()) {
        cancel_wait();
        return ready();
      }
      wait(key, left);
    }
  }

  // After the owner reclaimed a dead waiter: zero the counts (no one may be waiting at this moment).
  void reset_sleepers() noexcept;
  // Supervisor: `account` belongs to a process that is dead; take its counts out of futex_sleepers and
  // zero it. Returns how many counts it removed.
  static std::uint32_t forget(EventCountShared* shared, std::atomic<std::uint32_t>& account) noexcept;

  EventCountShared* shared() const { return s_; }

 private:
  // Leave the count: the account first, then futex_sleepers (see "Dead waiters"). Relaxed: counts only.
  void withdraw() noexcept {
    if (account_ != nullptr) account_->fetch_sub(1, std::memory_order_relaxed);
    s_->futex_sleepers.fetch_sub(1, std::memory_order_relaxed);
  }
  void notify_slow() noexcept;
  EventCountShared* s_ = nullptr;
  std::atomic<std::uint32_t>* account_ = nullptr;
  int notify_fd_ = -1;
};

// One eventfd on which a process waits for many EventCounts (epoll, asio, asyncio).
// Usage: arm(ec) for each source (W1), re-check every source (W3), poll(fd()) (W4), consume(), disarm(ec).
class EventFdWaiter {
 public:
  static Result<EventFdWaiter> create();
  EventFdWaiter(EventFdWaiter&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  EventFdWaiter& operator=(EventFdWaiter&& other) noexcept;
  EventFdWaiter(const EventFdWaiter&) = delete;
  ~EventFdWaiter();

  int fd() const { return fd_; }
  void arm(EventCount& ec) noexcept {
    ec.shared()->fd_sleepers.fetch_add(1, std::memory_order_seq_cst);  // W1: pairs with N2.
    std::atomic_thread_fence(std::memory_order_seq_cst);               // W1': see prepare_wait()
  }
  void disarm(EventCount& ec) noexcept { ec.shared()->fd_sleepers.fetch_sub(1, std::memory_order_relaxed); }
  // Wait until the fd is readable or the timeout (poll). Returns true if it was signalled.
  bool wait(std::chrono::nanoseconds timeout) noexcept;
  // Read the counter to zero (non-blocking). Returns how many signals were pending.
  std::uint64_t consume() noexcept;

 private:
  explicit EventFdWaiter(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace shmbus
