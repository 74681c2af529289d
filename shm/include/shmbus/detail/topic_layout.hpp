// The shared layout of a topic segment (both kinds), with its static_asserts. See topic.hpp for what the
// parts are for and who writes them; stream_layout.hpp for a stream's connections.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shmbus/config.hpp"
#include "shmbus/detail/directory.hpp"  // kNameCap
#include "shmbus/detail/stream_layout.hpp"
#include "shmbus/eventcount.hpp"

namespace shmbus {

// ---- a message in a chunk ----

// Queues fill every field. A stream's slot carries size, attribute size and sequence, so a stream
// publisher writes only `timestamp_ns`, and only when it stamps (kSlotStamped in the slot).
struct MessageHeader {
  std::uint64_t seq;           // the publisher's sequence number, from 1
  std::uint64_t publisher;     // the publisher's id
  std::uint64_t timestamp_ns;  // CLOCK_REALTIME at publish, 0 when the publisher does not stamp
  std::uint32_t payload_size;
  std::uint32_t attrs_size;
  std::uint32_t flags;  // kMsgRedelivered
  std::uint32_t reserved0;
  std::uint64_t reserved[3];
};
static_assert(sizeof(MessageHeader) == 64);
inline constexpr std::uint32_t kMsgRedelivered = 1;

// ---- stream subscriber slots ----

inline constexpr std::uint32_t kSlotFree = 0;
inline constexpr std::uint32_t kSlotActive = 1;
inline constexpr std::uint32_t kSlotClosing = 2;  // its subscriber left or died; connections still close

// Three lines, by writer: the broker's, the subscriber's, and the subscriber's wake word.
struct alignas(kCacheLine) SubscriberSlot {
  std::atomic<std::uint64_t> owner;       // OwnerId of the subscribing process; 0 when free (broker)
  std::atomic<std::uint32_t> state;       // kSlotFree / kSlotActive / kSlotClosing (broker)
  std::uint32_t index;                    // fixed at creation
  std::atomic<std::uint64_t> port;        // client-chosen port id (broker)
  std::atomic<std::uint64_t> last_owner;  // the owner of the latest activation, kept when the slot is
                                          // freed: only its threads can be counted in `ec` (broker)
  std::atomic<std::uint64_t> close_gen;   // closing: the generation that took its connections away
  std::atomic<std::uint32_t> quiet;       // closing: 1 when its subscriber stopped by itself (it asked,
                                          // or it is dead); else the broker waits for its ack (broker)
  std::uint32_t reserved0;
  std::uint8_t pad0[kCacheLine - 48];
  // The subscriber's line: statistics and the steps the broker must be able to finish after a SIGKILL.
  alignas(kCacheLine) std::atomic<std::uint64_t> delivered;  // messages the subscriber took
  detail::StreamStep taking;                                 // about to hold a chunk (stream_layout.hpp)
  detail::StreamStep releasing;                              // about to give one back
  std::atomic<std::uint64_t> seen_generation;  // the generation its tables reflect (its ack, release)
  std::uint8_t pad1[kCacheLine - 48];
  EventCountShared ec;  // the subscriber sleeps here; publishers notify it
};
static_assert(sizeof(SubscriberSlot) == 3 * kCacheLine);
static_assert(offsetof(SubscriberSlot, delivered) == kCacheLine);
static_assert(offsetof(SubscriberSlot, ec) == 2 * kCacheLine);
static_assert(std::is_standard_layout_v<SubscriberSlot>);

// ---- the topic header ----

inline constexpr std::uint32_t kWaiterRecords = 256;  // per topic; more waiting processes poll
inline constexpr std::uint32_t kLaneNotEmpty = 0;     // WaiterRecord lanes: TopicShared::not_empty
inline constexpr std::uint32_t kLaneSpace = 1;        // and TopicShared::space

struct TopicShared {
  // Geometry, written by the creator (the broker) and read once by whoever opens the segment.
  std::uint64_t topic_id;
  std::uint32_t kind;      // TopicKind
  std::uint32_t overflow;  // Overflow
  std::uint64_t depth;     // queue capacity, or per-connection ring capacity (stream)
  std::uint64_t max_size;
  std::uint32_t attrs_max;
  std::uint32_t waiter_count;
  std::uint64_t pool_offset;     // Ref<ChunkPoolShared>
  std::uint64_t waiters_offset;  // Ref<WaiterRecord>[waiter_count]
  // Streams only (0 for queues).
  std::uint32_t max_publishers;
  std::uint32_t max_subscribers;
  std::uint64_t publishers_offset;   // PublisherSlot[max_publishers]
  std::uint64_t subscribers_offset;  // SubscriberSlot[max_subscribers]
  std::uint64_t connections_offset;  // conn_capacity records of conn_stride bytes
  std::uint64_t conn_stride;
  std::uint32_t conn_capacity;
  std::uint32_t reserved0;
  std::uint64_t comp_depth;       // completion cells per connection
  std::uint64_t pub_conn_offset;  // u32[max_publishers][max_subscribers]: connection or kNoConn
  std::uint64_t sub_conn_offset;  // u32[max_subscribers][max_publishers]
  std::uint64_t held_offset;      // u64[max_subscribers][2][held_words]: chunks each subscriber holds,
                                  // and those it let go of after a close (StreamView::rel_of)
  std::uint64_t held_words;
  std::uint32_t name_len;
  char name[kNameCap];
  std::uint8_t pad0[kCacheLine - ((148 + kNameCap) % kCacheLine)];
  // Read-mostly: written by the broker when something changes, read by every port.
  alignas(kCacheLine) std::atomic<std::uint64_t> generation;  // streams: bumped after table changes (G1)
  std::atomic<std::uint32_t> waiter_hwm;                      // covers every claimed waiter record
  std::atomic<std::uint32_t> deleted;  // 1 once deleted or purged (release): ports must stop using it
  std::uint8_t pad1[kCacheLine - 16];
  // Statistics, relaxed. Queue producers write one line and consumers another; stream publishers and
  // subscribers count in their own slots, and the broker folds a slot's counts in here when it frees it.
  alignas(kCacheLine) std::atomic<std::uint64_t> published;
  std::atomic<std::uint64_t> dropped;
  std::uint8_t pad2[kCacheLine - 16];
  alignas(kCacheLine) std::atomic<std::uint64_t> delivered;
  std::atomic<std::uint64_t> acked;
  std::atomic<std::uint64_t> nacked;
  std::uint8_t pad3[kCacheLine - 24];
  EventCountShared not_empty;  // queue consumers sleep here
  EventCountShared space;      // queue producers and allocators sleep here
};
static_assert(offsetof(TopicShared, name) == 148);
static_assert(offsetof(TopicShared, generation) % kCacheLine == 0);
static_assert(offsetof(TopicShared, published) % kCacheLine == 0);
static_assert(offsetof(TopicShared, not_empty) % kCacheLine == 0);
static_assert(std::is_standard_layout_v<TopicShared>);

}  // namespace shmbus
