// Topics in shared memory: the topic directory (one segment per domain, written only by the broker) and
// the topic segments (one per topic) that carry messages.
//
// A topic segment holds a ChunkPool whose chunks carry one message each: a 64-byte MessageHeader, up to
// `attrs_max` bytes of attributes, then up to `max_size` payload bytes. Every chunk is always in exactly
// one place (see chunk_pool.hpp), so whatever a killed process held is returned by the broker's reclaim.
//
//  - kind queue:  one message ring (pool ring 1) shared by all consumers. A producer allocates a chunk,
//    writes it and pushes it; a consumer pops it (each message reaches one consumer), and acks
//    (release) or nacks (push back, flagged redelivered). A consumer that dies before acking has its
//    chunks pushed back by reclaim(redeliver). The ring has a cell for every chunk of the pool, so a
//    message that goes back (a nack, a redelivery) always finds room and never waits for a consumer;
//    `depth` bounds new messages only: a producer waits while the ring holds depth messages or more.
//  - kind stream: one ring per subscriber (pool ring 1 + slot). The broker activates a SubscriberSlot
//    and sets its bit in `active_mask`; a publisher pushes each message into every active slot's ring:
//    the last subscriber gets the chunk the publisher wrote (zero copy), the others a copy. When a ring is
//    full, policy drop-oldest makes the publisher pop the oldest message of that ring and count it in
//    the slot's `dropped` (the subscriber reports the count since its last receive as missed, on the
//    message that follows the dropped ones); policy block makes the publisher wait on `space` until
//    the deadline, and a message that times out is counted in the slot's `gap`, which the next message
//    pushed to that slot carries in MessageHeader::missed_before.
//
// Processes: the broker creates topic segments, activates and frees subscriber slots, drains rings and
// reclaims; clients publish, receive, ack. The data path (TopicHandle's publish/receive) never talks to
// the broker and takes no lock.
//
// Waiting: a process that waits on a topic-wide EventCount (not_empty, space) is counted in its own
// WaiterRecord only (eventcount.hpp, "Dead waiters"), claimed by CAS on first wait and freed by the
// broker when the process is dead, so a waiter killed while parked leaves no count behind that would
// make every later notify a syscall. A process that finds every record taken waits without being
// counted, by sleeping 1 ms between checks (slower, never wrong).
//
// Memory ordering: message bytes are published by the pool's hand-over (R5/R3 -> A3/A5, see
// chunk_pool.hpp). active_mask: the broker drains a slot's ring, then sets the owner and state
// (relaxed), then sets the bit with a release fetch_or (R7); publishers load the mask with acquire (A7).
// A publisher that loaded the mask before a bit was cleared may still push into a freed slot's ring;
// the broker drains free slots again in its periodic sweep, so such a chunk is returned within a sweep.
// Counters are relaxed: statistics only. Directory entries are seqlocks: the broker makes `version`
// odd (relaxed store + release fence), writes, then makes it even with release (R8); readers load it with
// acquire (A8), copy, fence (acquire), and re-load: an odd or changed version means retry.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/chunk_pool.hpp"
#include "shmbus/config.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/result.hpp"
#include "shmbus/segment.hpp"

namespace shmbus {

enum class TopicKind : std::uint32_t { stream = 1, queue = 2 };
enum class Overflow : std::uint32_t { drop_oldest = 1, block = 2 };

const char* to_string(TopicKind k);
const char* to_string(Overflow o);
std::optional<TopicKind> parse_kind(std::string_view s);
std::optional<Overflow> parse_overflow(std::string_view s);

inline constexpr std::uint32_t kMaxSubscribers = kMaxPoolRings - 1;  // 63
inline constexpr std::size_t kNameCap = 208;                         // bytes reserved for a topic name

struct TopicOptions {
  TopicKind kind = TopicKind::stream;
  std::uint64_t depth = 64;       // messages per subscriber ring (stream) or in the queue; rounded up to 2^k
  std::uint64_t max_size = 4096;  // payload bytes
  Overflow overflow = Overflow::drop_oldest;  // streams only; queues always give back-pressure
  std::uint32_t max_subscribers = 8;          // streams only, 1..63
  std::uint32_t attrs_max = 256;              // bytes of encoded attributes per message
  unsigned mode = 0600;                       // segment file mode
  gid_t group = static_cast<gid_t>(-1);       // segment group, set at creation (before the mode grants it)
};

// Checks ranges; the message names the field and the limit.
Status check_topic_options(const TopicOptions& o);

// ---- messages ----

struct MessageHeader {
  std::uint64_t seq;           // the publisher's sequence number, from 1
  std::uint64_t publisher;     // the publisher's id (OwnerId of its process << 0, xor its port number)
  std::uint64_t timestamp_ns;  // CLOCK_REALTIME at publish
  std::uint32_t payload_size;
  std::uint32_t attrs_size;
  std::uint32_t flags;          // kMsgRedelivered
  std::uint32_t missed_before;  // stream, block policy: messages this subscriber missed just before this one
  std::uint64_t reserved[3];
};
static_assert(sizeof(MessageHeader) == 64);
inline constexpr std::uint32_t kMsgRedelivered = 1;

// Attributes: a few key/value pairs, values string or integer. Encoded per entry as
// u8 type (1 string, 2 int), u8 key length, u16 value length, key bytes, value bytes (int: 8 bytes LE).
struct AttrValue {
  bool is_int = false;
  std::int64_t i = 0;
  std::string s;
  friend bool operator==(const AttrValue&, const AttrValue&) = default;
};
using Attributes = std::vector<std::pair<std::string, AttrValue>>;
// Encode into `out` (at most `cap` bytes); false (with a message in *why) if it does not fit or a key is
// empty or longer than 255 bytes.
bool encode_attrs(const Attributes& attrs, std::byte* out, std::size_t cap, std::uint32_t* size,
                  std::string* why);
// Decode; malformed bytes end the list early (never read past `size`).
Attributes decode_attrs(const std::byte* in, std::uint32_t size);
std::optional<AttrValue> find_attr(const std::byte* in, std::uint32_t size, std::string_view key);

// ---- shared layout ----

// Three lines, by writer: the broker and the publishers (read by the subscriber on each receive, written
// rarely), the subscriber's own counter, and the eventcount. A publisher never writes a line that the
// subscriber writes on every message.
struct alignas(kCacheLine) SubscriberSlot {
  std::atomic<std::uint64_t> owner;       // OwnerId of the subscribing process; 0 when free (broker writes)
  std::atomic<std::uint32_t> state;       // kSlotFree / kSlotActive (broker writes)
  std::uint32_t ring;                     // its pool ring, 1 + slot index (fixed at creation)
  std::atomic<std::uint64_t> port;        // client-chosen port id, for status (broker writes)
  std::atomic<std::uint64_t> dropped;     // messages publishers dropped from this ring (drop-oldest)
  std::atomic<std::uint64_t> gap;         // block policy: messages this slot missed at the tail, to be
                                          // reported by the next message pushed to it (missed_before)
  std::atomic<std::uint64_t> last_owner;  // the owner of the latest activation, kept when the slot is
                                          // freed: only its threads can be counted in `ec` (broker writes)
  std::atomic<std::uint64_t> freed_at;    // TopicShared::published when the slot was last freed: a
                                          // returning owner missed what was published since
  std::uint8_t pad0[kCacheLine - 56];
  alignas(kCacheLine) std::atomic<std::uint64_t> delivered;  // messages the subscriber took (it writes)
  std::uint8_t pad1[kCacheLine - 8];
  EventCountShared ec;  // the subscriber sleeps here
};
static_assert(sizeof(SubscriberSlot) == 3 * kCacheLine);
static_assert(offsetof(SubscriberSlot, delivered) == kCacheLine);
static_assert(offsetof(SubscriberSlot, ec) == 2 * kCacheLine);
inline constexpr std::uint32_t kSlotFree = 0;
inline constexpr std::uint32_t kSlotActive = 1;

inline constexpr std::uint32_t kWaiterRecords = 256;  // per topic; more waiting processes poll (see above)
inline constexpr std::uint32_t kLaneNotEmpty = 0;     // WaiterRecord lanes: TopicShared::not_empty
inline constexpr std::uint32_t kLaneSpace = 1;        // and TopicShared::space

struct TopicShared {
  std::uint64_t topic_id;
  std::uint32_t kind;      // TopicKind
  std::uint32_t overflow;  // Overflow
  std::uint64_t depth;     // ring capacity
  std::uint64_t max_size;
  std::uint32_t max_subscribers;
  std::uint32_t attrs_max;
  std::uint64_t pool_offset;         // Ref<ChunkPoolShared>
  std::uint64_t subscribers_offset;  // Ref<SubscriberSlot>[max_subscribers] (streams)
  std::uint64_t waiters_offset;      // Ref<WaiterRecord>[waiter_count] (eventcount.hpp)
  std::uint32_t waiter_count;
  std::uint32_t name_len;
  char name[kNameCap];
  std::uint8_t pad0[kCacheLine - ((72 + kNameCap) % kCacheLine)];
  alignas(kCacheLine) std::atomic<std::uint64_t> active_mask;  // streams: bit i = slot i active (R7/A7)
  std::atomic<std::uint32_t> waiter_hwm;  // covers every claimed waiter record (WaiterTable::hwm)
  std::atomic<std::uint32_t> deleted;     // 1 once the broker deleted or purged the topic (release): the
                                          // segment is unlinked, ports must stop using it
  std::uint8_t pad1[kCacheLine - 16];
  // Statistics, relaxed. Written by publishers on one line and by receivers on another, so that a
  // publisher and a subscriber do not bounce one line between them on every message.
  alignas(kCacheLine) std::atomic<std::uint64_t> published;
  std::atomic<std::uint64_t> dropped;
  std::uint8_t pad2[kCacheLine - 16];
  alignas(kCacheLine) std::atomic<std::uint64_t> delivered;  // queues only; a stream counts per slot
  std::atomic<std::uint64_t> acked;
  std::atomic<std::uint64_t> nacked;
  std::uint8_t pad3[kCacheLine - 24];
  EventCountShared not_empty;  // queue consumers sleep here
  EventCountShared space;      // producers / blocking publishers sleep here
};
static_assert(offsetof(TopicShared, name) == 72);
static_assert(offsetof(TopicShared, active_mask) % kCacheLine == 0);
static_assert(offsetof(TopicShared, published) % kCacheLine == 0);
static_assert(offsetof(TopicShared, not_empty) % kCacheLine == 0);
static_assert(std::is_standard_layout_v<TopicShared>);

// ---- the directory ----

inline constexpr std::uint32_t kMaxTopics = 1024;

struct TopicEntry {
  std::atomic<std::uint64_t> version;  // seqlock: odd while the broker writes (R8/A8)
  std::uint64_t topic_id;              // 0: free entry
  std::uint32_t kind;
  std::uint32_t name_len;
  char name[kNameCap];
  std::uint8_t pad[256 - 24 - kNameCap];
};
static_assert(sizeof(TopicEntry) == 256);

struct DirectoryShared {
  std::atomic<std::uint64_t> broker_owner;  // OwnerId of the broker that runs (or ran) the domain
  std::atomic<std::uint64_t> generation;    // bumped on every change
  std::uint64_t next_topic_id;              // broker only
  std::uint32_t max_topics;
  std::uint32_t reserved;
  // The pid namespace of the brokers that stamp owner ids in this domain (PidNamespace, owner.hpp), 0
  // until the first broker records it. Broker only.
  std::uint64_t pid_ns_ino;
  std::uint64_t pid_ns_dev;
  std::uint8_t pad[kCacheLine - 48];
  TopicEntry entries[kMaxTopics];
};
static_assert(offsetof(DirectoryShared, entries) == kCacheLine);

struct TopicInfo {
  std::uint64_t id = 0;
  TopicKind kind = TopicKind::stream;
  std::string name;
};

// Client side: read the directory (seqlock reads; never blocks on the broker).
class DirectoryView {
 public:
  static Result<DirectoryView> open(std::string_view domain);
  std::optional<TopicInfo> find(std::string_view name) const;
  std::vector<TopicInfo> list() const;
  std::uint64_t generation() const { return d_->generation.load(std::memory_order_acquire); }
  DirectoryShared* shared() const { return d_; }

 private:
  std::optional<TopicInfo> read_entry(const TopicEntry& e) const;
  Segment seg_;
  DirectoryShared* d_ = nullptr;
};

// Broker side: create or adopt the directory; add and remove entries (the broker is the only writer).
class DirectoryWriter {
 public:
  // Open and validate an existing directory (adopt), or create one when there is none or it is invalid
  // (the invalid one is removed; the error it gave is returned in *replaced_reason).
  static Result<DirectoryWriter> create_or_adopt(std::string_view domain, unsigned mode,
                                                 std::string* replaced_reason,
                                                 gid_t group = static_cast<gid_t>(-1));
  Result<std::uint64_t> add(std::string_view name, TopicKind kind);  // returns the new topic id
  bool remove(std::string_view name);
  std::vector<TopicInfo> list() const;
  std::optional<TopicInfo> find(std::string_view name) const;
  DirectoryShared* shared() const { return d_; }
  void unlink();  // remove the segment's name (shutdown without --keep-segments)

 private:
  Segment seg_;
  DirectoryShared* d_ = nullptr;
  std::string domain_;
};

// A deadline that reads the clock only when first needed: the data path passes one down and the fast
// path (room in the ring, a free chunk) never asks for it (a clock read is ~25 ns here, a third of a
// message's cost). Implicit from a time_point for callers that have one.
class Deadline {
 public:
  Deadline(std::chrono::steady_clock::time_point at) : at_(at), known_(true) {}  // NOLINT: implicit
  static Deadline after(std::chrono::nanoseconds timeout) {
    Deadline d;
    d.timeout_ = timeout > std::chrono::hours(24 * 365) ? std::chrono::hours(24 * 365) : timeout;
    return d;
  }
  static Deadline now() { return after(std::chrono::nanoseconds::zero()); }
  std::chrono::steady_clock::time_point at() const {
    if (!known_) {
      at_ = std::chrono::steady_clock::now() + timeout_;
      known_ = true;
    }
    return at_;
  }
  std::chrono::nanoseconds left() const { return at() - std::chrono::steady_clock::now(); }

 private:
  Deadline() = default;
  std::chrono::nanoseconds timeout_{0};
  mutable std::chrono::steady_clock::time_point at_{};
  mutable bool known_ = false;
};

// ---- a topic segment ----

// Sleep min(1 ms, left): the wait of a process that has no waiter record.
void poll_pause(std::chrono::nanoseconds left) noexcept;

class TopicHandle {
 public:
  // Broker: create and publish the segment of a new topic.
  static Result<TopicHandle> create(std::string_view domain, std::uint64_t id, std::string_view name,
                                    const TopicOptions& options);
  // Anyone: open and validate an existing topic segment.
  static Result<TopicHandle> open(std::string_view domain, std::uint64_t id);
  static Status remove(std::string_view domain, std::uint64_t id);

  TopicHandle() = default;
  TopicHandle(TopicHandle&& other) noexcept { *this = std::move(other); }
  TopicHandle& operator=(TopicHandle&& other) noexcept;

  // The OwnerId this handle stamps (chunks, waiter records); see ChunkPool::set_identity().
  void set_identity(OwnerId id) noexcept { pool_.set_identity(id); }
  OwnerId identity() const noexcept { return pool_.identity(); }

  TopicShared* shared() const { return t_; }
  ChunkPool& pool() { return pool_; }
  const ChunkPool& pool() const { return pool_; }
  const Segment& segment() const { return seg_; }
  TopicKind kind() const { return static_cast<TopicKind>(t_->kind); }
  Overflow overflow() const { return static_cast<Overflow>(t_->overflow); }
  std::string name() const { return std::string(t_->name, t_->name_len); }
  std::size_t max_size() const { return t_->max_size; }
  std::uint32_t attrs_max() const { return t_->attrs_max; }
  SubscriberSlot* slot(std::uint32_t i) const { return slots_ + i; }
  std::uint32_t max_subscribers() const { return t_->max_subscribers; }

  // Message layout inside a chunk.
  MessageHeader* header(std::uint32_t chunk) const {
    return reinterpret_cast<MessageHeader*>(pool_.data(chunk));
  }
  std::byte* attrs(std::uint32_t chunk) const { return pool_.data(chunk) + sizeof(MessageHeader); }
  std::byte* payload(std::uint32_t chunk) const {
    return pool_.data(chunk) + sizeof(MessageHeader) + t_->attrs_max;
  }

  // ---- data path (clients) ----
  enum class IoStatus : std::uint8_t { ok, no_chunk, timed_out, no_subscribers };
  // Stream: deliver the held chunk to every active subscriber (the chunk is given away in all cases).
  // Waits up to `deadline` only under policy block. Returns ok, or timed_out when some subscriber's
  // ring stayed full (those subscribers miss this message; counted in `dropped`).
  IoStatus publish_stream(std::uint32_t chunk, const Deadline& deadline) noexcept;
  // Queue: push a new message (the caller counts `published`). While the queue holds `depth` messages or
  // more, wait for space until `deadline` (then timed_out; the chunk is still held).
  IoStatus push_queue(std::uint32_t chunk, const Deadline& deadline) noexcept;
  // Queue: put back a message taken from it (a nack, a redelivery). Never waits: the ring has a cell for
  // every chunk. timed_out only if the ring is damaged (the chunk is then still held).
  IoStatus requeue(std::uint32_t chunk) noexcept;
  // Allocate a chunk, waiting for one until `deadline` (back-pressure).
  IoStatus allocate(std::uint32_t& chunk, const Deadline& deadline) noexcept;
  // Give back a chunk (a released sample, an acked delivery) and wake a blocked publisher if any.
  void release(std::uint32_t chunk) noexcept;

  // Wait until ready() (which may take something: a chunk, a message), spinning `spin` times first,
  // then parking on the topic's not_empty or space counted in this process's waiter record. False when
  // the deadline passed first (ready() is tried once more at the end).
  enum class WaitOn : std::uint8_t { not_empty, space };
  template <typename Ready>
  bool wait_for(WaitOn on, Ready&& ready, const Deadline& deadline, std::uint32_t spin = 0) noexcept;
  // This process's waiter record (claimed on first use), or null when every record is taken.
  WaiterRecord* my_record() noexcept;
  // Wake whoever waits on not_empty or space (no syscall when nobody does).
  void notify(WaitOn on) const noexcept {
    EventCount(on == WaitOn::not_empty ? &t_->not_empty : &t_->space, &waiters_,
               on == WaitOn::not_empty ? kLaneNotEmpty : kLaneSpace)
        .notify();
  }

  // ---- broker ----
  // Activate a free subscriber slot for `owner`; returns its index. Drains the slot's ring first.
  // Idempotent: a slot already active for (owner, port) is returned again (a subscribe retried after the
  // broker died while handling it).
  Result<std::uint32_t> activate_slot(OwnerId owner, std::uint64_t port);
  // Re-activate a given slot for an owner that reconnects after a broker restart (idempotent; sets the
  // slot's active_mask bit even when the slot was active already). A slot that was freed while its owner
  // was away is given back to that owner if nobody took it, with what it missed meanwhile added to its
  // `dropped` count (so its next sample reports it); a slot another process took is an error.
  Status adopt_slot(std::uint32_t slot, OwnerId owner, std::uint64_t port);
  // The active slot of `owner` for `port`, if any.
  std::optional<std::uint32_t> find_slot(OwnerId owner, std::uint64_t port) const;
  // Mark the topic deleted (before its segment is unlinked), so that ports fail rather than publish into
  // a segment nobody will read again.
  void mark_deleted() noexcept { t_->deleted.store(1, std::memory_order_release); }
  bool deleted() const noexcept { return t_->deleted.load(std::memory_order_acquire) != 0; }
  void free_slot(std::uint32_t slot);
  // Broker, at adoption: make active_mask agree with the slots' states (a broker killed between a slot's
  // state store and its mask update leaves them apart). Returns how many bits it changed.
  std::uint32_t repair_mask();
  // Broker, at adoption: release the waiter mark's lock if a broker died holding it, and lower the mark
  // past free records (eventcount.hpp, "The mark").
  void repair_waiters() noexcept {
    waiters_.clear_lock();
    (void)waiters_.lower();
  }
  // Return the chunks in the rings of free slots (stragglers pushed after a slot was freed), and retry
  // held redeliveries (*requeued counts those that went back to the queue).
  std::uint64_t drain_free_slots(std::uint64_t* requeued = nullptr);
  // Reclaim what `dead` held (queue: redeliver; stream: free), free its slots and its waiter records.
  ReclaimReport reclaim(OwnerId dead);
  // Owners named in chunk owner words, slots or waiter records that are provably dead (liveness() ==
  // dead). Those whose liveness cannot be told are added to *unknown, and never reclaimed.
  std::vector<OwnerId> dead_owners(std::vector<OwnerId>* unknown = nullptr) const;
  // Chunks the broker took for redelivery and could not push yet (retried every sweep).
  std::size_t held() const { return held_.size(); }
  std::uint32_t active_subscribers() const;
  std::uint64_t queued_messages() const;  // messages in the rings now
  // Messages taken by receivers: for a queue the topic counter; for a stream the active slots' counters
  // plus those of freed slots (free_slot() folds a slot's count into the topic's).
  std::uint64_t delivered_total() const;

 private:
  std::uint64_t drain_ring(std::uint32_t ring);
  std::uint64_t retry_held();
  std::vector<std::uint32_t> held_;  // broker: redeliveries that met a full ring, retried by the sweep
  Segment seg_;
  TopicShared* t_ = nullptr;
  SubscriberSlot* slots_ = nullptr;
  WaiterTable waiters_;  // geometry validated at open
  std::uint64_t depth_ = 0;
  // This process's waiter record: -1 until a wait claims one (a failed claim is retried at each wait).
  // Atomic: the threads of a process share a handle.
  std::atomic<std::int32_t> record_{-1};
  ChunkPool pool_;
};

template <typename Ready>
bool TopicHandle::wait_for(WaitOn on, Ready&& ready, const Deadline& deadline, std::uint32_t spin) noexcept {
  if (ready()) return true;  // before any clock read
  for (std::uint32_t i = 0; i < spin; ++i) {
    if (ready()) return true;
    __builtin_ia32_pause();
  }
  WaiterRecord* mine = my_record();
  if (mine == nullptr) {  // no waiter record: poll, uncounted, so that dying here leaks nothing
    for (;;) {
      if (ready()) return true;
      const auto left = deadline.left();
      if (left <= std::chrono::nanoseconds::zero()) return ready();
      poll_pause(left);
    }
  }
  EventCount ec(on == WaitOn::not_empty ? &t_->not_empty : &t_->space, &waiters_,
                on == WaitOn::not_empty ? kLaneNotEmpty : kLaneSpace, mine);
  for (;;) {
    const std::uint32_t key = ec.prepare_wait();  // W1, W2
    if (ready()) {                                // W3
      ec.cancel_wait();
      return true;
    }
    const auto left = deadline.left();
    if (left <= std::chrono::nanoseconds::zero()) {
      ec.cancel_wait();
      return ready();
    }
    ec.wait(key, left);  // W4
  }
}

}  // namespace shmbus
