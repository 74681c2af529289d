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
// Memory ordering (no lost wake-up). Waiter: W1 sleepers.fetch_add (seq_cst), W2 seq.fetch_or(kArmed)
// (seq_cst) for the key, W1' fence, W3 re-check the condition, W4 sleep while seq == key. Notifier: N1
// publish (release, in the caller), N2 atomic_thread_fence(seq_cst), N3 sleepers.load, N3b seq.load,
// N4 seq CAS (+2, kArmed cleared) + wake. The fences put W1 and N2 in one total order: if N3 reads 0, W1
// came after N2, so W3 sees N1's data. If N3 reads a sleeper and N3b an armed seq, N4 changes seq, and
// FUTEX_WAIT compares seq with the key atomically in the kernel, so W4 either does not sleep or is woken.
// If N3b reads seq disarmed, see "Armed".
//
// Armed. Bit 0 of `seq` (kArmed) says "a futex waiter took its key since the last wake": W2 sets it
// (fetch_or, seq_cst) and takes seq | kArmed as its key; N4 clears it while bumping seq by 2 (CAS) and
// only then calls FUTEX_WAKE. A notifier that finds waiters counted but the bit clear (N3b) skips the
// syscall: every waiter that armed before the last clear was woken by that clear's FUTEX_WAKE (wake-all)
// or finds its key stale. Without it, every message published while a woken waiter is still on its way
// back to a CPU (10-45 us here) paid a futex syscall. No lost wake-up: a waiter whose W2 the notifier's
// N3b did not see came after N2 in the total order (N3b reads a value of seq earlier than W2's), so its
// W3 sees N1 (the same store-buffer argument as W1 against N3); a waiter whose W2 came after a clear
// read-from that clear's RMW, so it sees the clearing notifier's N1. A waiter that armed and then did
// not sleep (W3 true, a timeout) costs the next notifier one needless wake-up, never a hang.
//
// Stopped and dead notifiers. A clear promises a FUTEX_WAKE that its notifier makes only after the CAS: a
// notifier preempted, SIGSTOPped or SIGKILLed between the two would leave every waiter asleep in
// FUTEX_WAIT on its (now stale) key while later notifiers find the bit clear and skip the syscall: a
// lost wake-up, for good if that notifier is dead and nobody arms again (a subscriber's wake word, idle
// queue consumers). So the notifier that makes the FUTEX_WAKE then stores the disarmed value it woke for
// in `woken` (release), and a notifier that finds the bit clear skips the syscall only if `woken` equals
// seq (acquire); otherwise it makes the FUTEX_WAKE itself and stores `woken`. FUTEX_WAKE(INT_MAX) wakes
// every sleeper whatever its key, and keys are odd while a disarmed seq is even, so "woken == seq"
// means no sleeper is left from before the last clear. The cost: a second FUTEX_WAKE when another notify
// comes while the clearer is inside its syscall (about a microsecond); a stale `woken` (two wakers racing)
// costs at most one more.
//
// Dead waiters. A waiter killed while counted would leave its count high forever, and every notify would
// then make a needless FUTEX_WAKE (never a hang, but a syscall per message). Two cures:
//  - an EventCount that only one process waits on (a subscriber slot's) counts in futex_sleepers and is
//    reset by its supervisor once that process is known dead (reset_sleepers());
//  - an EventCount that many processes wait on counts each process's waiters in that process's own
//    WaiterRecord (a "lane" of it) and nowhere else: W1 is the increment of the record's lane, and a
//    notifier (N3) reads the lanes of every record claimed so far instead of futex_sleepers. A record is
//    written by one process only, so its count is exactly the number of that process's threads between
//    W1 and the end of W4; when the process dies, its supervisor zeroes the record (forget()) and nothing
//    else is left behind, whatever instruction the process died at. (An earlier design kept a global
//    count plus a per-process account: a process killed between the two updates leaked a count, and the
//    soak test found such leaks within a minute.) The no-lost-wake-up argument is unchanged: W1 (a
//    seq_cst RMW on the lane) and N2 are in one total order, and N3's relaxed loads after the seq_cst
//    fence see W1 when W1 came first; a record claimed after N3 read the high-water mark was covered by
//    the mark (a seq_cst RMW on it, before W1) after N2, so its waiter's W3 sees N1. The cost: a notify
//    reads one line per record below the mark (they change only when a process starts or stops waiting,
//    so they stay in the notifier's cache) instead of one word; claimers take the lowest free record, and
//    the supervisor lowers the mark past free records at the top (lower()), so the mark follows the
//    number of processes that wait, not the most there ever were.
//
//    The mark (WaiterTable::hwm), and why lowering it loses no waiter. A claimer CASes a record's owner
//    (A), then makes sure the mark covers it (cover(): load, and CAS it up if needed: B). The supervisor
//    locks the mark (C: CAS to mark|kLowering), checks the top record's owner (D), and stores the lowered
//    mark only if that record is free (E). All seq_cst, so A/B against C/D is the store-buffer pattern:
//    either D sees A (no lowering past an owned record), or B sees C or E (the claimer waits out the lock
//    and raises the mark again). A claimer that sees the lock held for long (a supervisor that died
//    holding it; the next one clears it at adoption) waits without being counted, by polling.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "shmbus/config.hpp"
#include "shmbus/result.hpp"

namespace shmbus {

// One process's waiters on up to kWaiterLanes EventCounts that share a WaiterTable (a topic's not_empty
// and space). Alone on its line: a process entering a wait does not disturb another's record.
inline constexpr std::uint32_t kWaiterLanes = 2;
struct alignas(kHwLine) WaiterRecord {
  std::atomic<std::uint64_t> owner;                  // OwnerId; 0 when free (claimed by CAS, acq_rel;
                                                     // freed by the supervisor with a release store)
  std::atomic<std::uint32_t> waiting[kWaiterLanes];  // its threads between W1 and the end of W4, per lane
  std::uint8_t pad[kHwLine - 8 - 4 * kWaiterLanes];
};
static_assert(sizeof(WaiterRecord) == kHwLine);
static_assert(std::is_standard_layout_v<WaiterRecord>);

// A process's view of a table of WaiterRecords in shared memory: `capacity` records and a high-water
// mark that covers every claimed record (records below it may be free: their lanes are zero then).
struct WaiterTable {
  static constexpr std::uint32_t kLowering = 1u << 31;  // in *hwm: the supervisor is lowering the mark

  WaiterRecord* records = nullptr;
  std::uint32_t capacity = 0;                 // validated at attach; never re-read from shared memory
  std::atomic<std::uint32_t>* hwm = nullptr;  // see "The mark" above

  // N3 for `lane`: is any process waiting? Relaxed loads: the caller's seq_cst fence (N2) orders them.
  bool any_waiting(std::uint32_t lane) const noexcept {
    std::uint32_t n = hwm->load(std::memory_order_relaxed) & ~kLowering;
    if (n > capacity) n = capacity;  // a damaged mark must not send us past the table
    for (std::uint32_t i = 0; i < n; ++i)
      if (records[i].waiting[lane].load(std::memory_order_relaxed) != 0) return true;
    return false;
  }
  // Waiter: the record of `me` (claiming the lowest free one if it has none), covered by the mark; its
  // index in *index. Null when every record is taken or the mark stayed locked (then wait by polling).
  WaiterRecord* claim(std::uint64_t me, std::uint32_t* index) const noexcept;
  // Waiter: make the mark cover record `index` (B above). False if it stayed locked.
  bool cover(std::uint32_t index) const noexcept;
  // Supervisor: lower the mark past free records at its top (C, D, E above). Returns by how many.
  std::uint32_t lower() const noexcept;
  // Supervisor, at adoption: release a lock left by a supervisor that died while lowering.
  void clear_lock() const noexcept;
};

inline constexpr std::uint32_t kArmed = 1;  // bit 0 of EventCountShared::seq: see "Armed"

struct alignas(kCacheLine) EventCountShared {
  std::atomic<std::uint32_t> seq;             // the futex word: kArmed | 2 * wakes (see "Armed")
  std::atomic<std::uint32_t> futex_sleepers;  // waiters between W1 and the end of W4 (futex)
  std::atomic<std::uint32_t> fd_sleepers;     // the same, for the eventfd waiter
  std::atomic<std::uint32_t> wakes;           // syscalls made by notifiers (stats; relaxed)
  std::atomic<std::uint32_t> woken;           // a disarmed seq whose FUTEX_WAKE was made (see "Stopped...")
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
  // An EventCount whose waiters count in futex_sleepers (one waiting process; see "Dead waiters").
  explicit EventCount(EventCountShared* shared) : s_(shared) {}
  // An EventCount whose waiters count in `table`'s records, lane `lane`. A notifier passes no record; a
  // waiter passes its own (`mine`, claimed in `table`).
  EventCount(EventCountShared* shared, const WaiterTable* table, std::uint32_t lane,
             WaiterRecord* mine = nullptr)
      : s_(shared), table_(table), lane_(lane), mine_(mine) {}

  // Initialise the shared part in a fresh segment (creator only, before publish).
  static void init(EventCountShared* shared) noexcept;

  // --- notifier side ---------------------------------------------------------------------------------
  // Call after publishing with release. No syscall when nobody sleeps (N2, N3).
  void notify() noexcept {
    // N2: pairs with W1 in prepare_wait(); see the header comment.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    // N3: relaxed is enough after the seq_cst fence, which orders these loads against W1.
    if (table_ != nullptr ? !table_->any_waiting(lane_)
                          : s_->futex_sleepers.load(std::memory_order_relaxed) == 0 &&
                                (notify_fd_ < 0 || s_->fd_sleepers.load(std::memory_order_relaxed) == 0))
      return;
    notify_slow();
  }
  // notify() without its fence: for a notifier that published to several EventCounts and issued one
  // seq_cst fence (N2) after all of them (a publisher's fan-out).
  void notify_fenced() noexcept {
    if (table_ != nullptr ? !table_->any_waiting(lane_)
                          : s_->futex_sleepers.load(std::memory_order_relaxed) == 0 &&
                                (notify_fd_ < 0 || s_->fd_sleepers.load(std::memory_order_relaxed) == 0))
      return;
    notify_slow();
  }
  // The eventfd that the (single) eventfd waiter of this EventCount sleeps on; -1 for none.
  void set_notify_fd(int fd) noexcept { notify_fd_ = fd; }

  // --- futex waiter side -----------------------------------------------------------------------------
  // W1 + W2: announce, then return the key to pass to wait().
  // With a table, only a waiter that passed its record may call prepare_wait().
  std::uint32_t prepare_wait() noexcept {
    // W1: pairs with N2. In table mode, the process's own lane, and nothing else (see "Dead waiters").
    (mine_ != nullptr ? mine_->waiting[lane_] : s_->futex_sleepers).fetch_add(1, std::memory_order_seq_cst);
    // W2: arm, and take the key. Pairs with N3b/N4 (see "Armed").
    const std::uint32_t key = s_->seq.fetch_or(kArmed, std::memory_order_seq_cst) | kArmed;
    // W1': the fence orders W1 and W2 before the caller's re-check (W3), which is usually an acquire load;
    // a seq_cst RMW alone does not order later non-seq_cst loads in the C++ model (free on x86: the RMW
    // is a full barrier already).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return key;
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
  // Supervisor: `record` belongs to a process that is dead; zero its lanes and free it. Returns how many
  // waiters it had counted.
  static std::uint32_t forget(WaiterRecord& record) noexcept;

  EventCountShared* shared() const { return s_; }

 private:
  // Leave the count (relaxed: only counts; the next W1 or N2 orders what matters).
  void withdraw() noexcept {
    (mine_ != nullptr ? mine_->waiting[lane_] : s_->futex_sleepers).fetch_sub(1, std::memory_order_relaxed);
  }
  void notify_slow() noexcept;
  EventCountShared* s_ = nullptr;
  const WaiterTable* table_ = nullptr;
  std::uint32_t lane_ = 0;
  WaiterRecord* mine_ = nullptr;
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
