// Topic segments (topic.hpp): options, creation, validated opening, waiter records. The queue's user half
// is queue_port.cpp, the broker's half of any topic topic_supervisor.cpp; a stream's user half is
// stream_port.cpp, its broker half stream_supervisor.cpp.
#include "shmbus/topic.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <ctime>
#include <utility>

#include "shmbus/paths.hpp"

namespace shmbus {
namespace {

constexpr std::string_view kTopicKind = "topic";

std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

std::uint64_t round_depth(std::uint64_t d) {
  return std::bit_ceil(d < 2 ? std::uint64_t{2} : d);
}

// The stream's geometry, from its options (also what check_topic_options() sizes).
struct StreamGeometry {
  std::uint64_t depth = 0;
  std::uint64_t comp_depth = 0;
  std::uint32_t conn_capacity = 0;
  std::uint64_t conn_stride = 0;
  std::uint64_t held_words = 0;
};

ChunkPoolOptions pool_options(const TopicOptions& o) {
  ChunkPoolOptions p;
  const std::uint64_t depth = round_depth(o.depth);
  p.chunk_size = sizeof(MessageHeader) + o.attrs_max + o.max_size;
  if (o.kind == TopicKind::queue) {
    // The ring's worth, plus chunks in flight: loaned by producers, held unacked by consumers. The ring
    // has a cell for every chunk, so that a message put back (nack, redelivery) always finds room:
    // producers stop at `depth` on their own (push_queue), consumers never wait to give a message back.
    p.chunk_count = static_cast<std::uint32_t>(depth + 64);
    p.ring_capacities = {std::bit_ceil(std::uint64_t{p.chunk_count})};
  } else {
    // Chunks carry messages too large to travel inline, and zero-copy loans. A publisher's chunks out at
    // once: a ring's worth (shared by all its subscribers), what subscribers hold, its loans and cache.
    p.chunk_count = static_cast<std::uint32_t>(o.max_publishers * (depth + 8) + 4 * o.max_subscribers);
  }
  return p;
}

StreamGeometry stream_geometry(const TopicOptions& o, std::uint32_t chunk_count) {
  StreamGeometry g;
  g.depth = round_depth(o.depth);
  // Completions a subscriber may owe one publisher: its ring's chunks and the samples it holds.
  g.comp_depth = std::bit_ceil(2 * g.depth + 16);
  // Twice the pairs: a pair whose subscriber left can still be closing while a newcomer connects.
  g.conn_capacity = 2 * o.max_publishers * o.max_subscribers;
  const std::uint64_t bytes =
      sizeof(detail::ConnectionShared) + g.depth * detail::kStreamSlotStride + g.comp_depth * 8;
  // Connections and their slots start on 128-byte boundaries: a slot is then one aligned pair of lines,
  // and the spatial prefetcher (which fetches a line's 128-byte buddy) never pulls the next slot's header
  // line into the subscriber's cache while the publisher is about to write it (measured: a 64-byte inline
  // round trip 2.3x that of an 8-byte one when slots straddled pairs; measured with the core ping-pong that
  // is now `scripts/bench core`).
  g.conn_stride = (bytes + detail::kSlotPair - 1) / detail::kSlotPair * detail::kSlotPair;
  g.held_words = (chunk_count + 63) / 64;
  return g;
}

// Copy a name into a fixed field.
void put_name(char* dst, std::uint32_t* len, std::string_view name) {
  std::memset(dst, 0, kNameCap);
  std::memcpy(dst, name.data(), name.size());
  *len = static_cast<std::uint32_t>(name.size());
}

}  // namespace

const char* to_string(TopicKind k) {
  return k == TopicKind::queue ? "queue" : "stream";
}
const char* to_string(Overflow o) {
  return o == Overflow::block ? "block" : "drop-oldest";
}
std::optional<TopicKind> parse_kind(std::string_view s) {
  if (s == "stream") return TopicKind::stream;
  if (s == "queue") return TopicKind::queue;
  return std::nullopt;
}
std::optional<Overflow> parse_overflow(std::string_view s) {
  if (s == "drop-oldest") return Overflow::drop_oldest;
  if (s == "block") return Overflow::block;
  return std::nullopt;
}

Status check_topic_options(const TopicOptions& o) {
  if (o.kind != TopicKind::stream && o.kind != TopicKind::queue)
    return Error(Errc::invalid_argument, "topic kind must be stream or queue");
  if (o.depth < 1 || o.depth > (1u << 20))
    return Error(Errc::invalid_argument, "depth " + std::to_string(o.depth) + " must be from 1 to 1048576");
  if (o.max_size < 1 || o.max_size > (1ULL << 30))
    return Error(Errc::invalid_argument,
                 "max size " + std::to_string(o.max_size) + " must be from 1 byte to 1 GiB");
  if (o.overflow != Overflow::drop_oldest && o.overflow != Overflow::block)
    return Error(Errc::invalid_argument, "overflow must be drop-oldest or block");
  if (o.max_subscribers < 1 || o.max_subscribers > kMaxStreamPorts)
    return Error(Errc::invalid_argument, "max subscribers " + std::to_string(o.max_subscribers) +
                                             " must be from 1 to " + std::to_string(kMaxStreamPorts));
  if (o.max_publishers < 1 || o.max_publishers > kMaxStreamPorts)
    return Error(Errc::invalid_argument, "max publishers " + std::to_string(o.max_publishers) +
                                             " must be from 1 to " + std::to_string(kMaxStreamPorts));
  if (o.attrs_max > 4096) return Error(Errc::invalid_argument, "attrs_max must be at most 4096 bytes");
  const auto p = pool_options(o);
  double bytes = static_cast<double>(p.chunk_count) * static_cast<double>(p.chunk_size);
  if (o.kind == TopicKind::stream) {
    const StreamGeometry g = stream_geometry(o, p.chunk_count);
    bytes += static_cast<double>(g.conn_capacity) * static_cast<double>(g.conn_stride);
  }
  if (bytes > 64.0 * (1ULL << 30) || p.chunk_count > (1u << 31))
    return Error(Errc::invalid_argument,
                 "topic would need " + std::to_string(static_cast<std::uint64_t>(bytes)) +
                     " bytes (depth x publishers x subscribers x max size); lower one of them");
  return {};
}

// ---- topic segments ----

Result<TopicHandle> TopicHandle::create(std::string_view domain, std::uint64_t id, std::string_view name,
                                        const TopicOptions& options) {
  if (auto ok = check_topic_name(name); !ok) return ok.error();
  if (auto ok = check_topic_options(options); !ok) return ok.error();
  TopicOptions o = options;
  o.depth = round_depth(o.depth);
  const bool stream = o.kind == TopicKind::stream;
  if (!stream) o.max_subscribers = o.max_publishers = 0;
  const ChunkPoolOptions po = pool_options(o);
  const StreamGeometry g = stream ? stream_geometry(o, po.chunk_count) : StreamGeometry{};
  std::size_t size = sizeof(SegmentHeader) + sizeof(TopicShared) + kCacheLine +
                     kWaiterRecords * sizeof(WaiterRecord) + kCacheLine + ChunkPool::footprint(po) + 4096;
  if (stream) {
    size += std::uint64_t{o.max_publishers} * sizeof(detail::PublisherSlot) + kCacheLine;
    size += std::uint64_t{o.max_subscribers} * sizeof(SubscriberSlot) + kCacheLine;
    size += std::uint64_t{g.conn_capacity} * g.conn_stride + detail::kSlotPair;
    size += 2 * std::uint64_t{o.max_publishers} * o.max_subscribers * sizeof(std::uint32_t) + 2 * kCacheLine;
    size += std::uint64_t{o.max_subscribers} * 2 * g.held_words * 8 + kCacheLine;
  }
  const std::string seg_name = topic_segment_name(domain, id);
  auto seg = Segment::create(seg_name, {.size = size, .mode = o.mode, .group = o.group, .kind = kTopicKind});
  if (!seg) return seg.error();
  auto fail = [&](const Error& e) {
    (void)Segment::remove(seg_name);
    return e;
  };
  auto tref = seg->allocate<TopicShared>(1, kCacheLine);
  if (!tref) return fail(tref.error());
  auto wref = seg->allocate<WaiterRecord>(kWaiterRecords, kCacheLine);
  if (!wref) return fail(wref.error());
  TopicShared* t = seg->at(*tref);
  if (stream) {
    auto pubs = seg->allocate<detail::PublisherSlot>(o.max_publishers, kCacheLine);
    auto subs = seg->allocate<SubscriberSlot>(o.max_subscribers, kCacheLine);
    auto conns = seg->allocate_bytes(std::uint64_t{g.conn_capacity} * g.conn_stride, detail::kSlotPair);
    auto pub_conn = seg->allocate<std::atomic<std::uint32_t>>(
        std::uint64_t{o.max_publishers} * o.max_subscribers, kCacheLine);
    auto sub_conn = seg->allocate<std::atomic<std::uint32_t>>(
        std::uint64_t{o.max_publishers} * o.max_subscribers, kCacheLine);
    auto held = seg->allocate<std::atomic<std::uint64_t>>(std::uint64_t{o.max_subscribers} * 2 * g.held_words,
                                                          kCacheLine);  // held, then released bits
    if (!pubs || !subs || !conns || !pub_conn || !sub_conn || !held)
      return fail(
          Error(Errc::no_space, "topic segment " + quoted(seg_name) + " is too small for its stream"));
    t->max_publishers = o.max_publishers;
    t->max_subscribers = o.max_subscribers;
    t->publishers_offset = pubs->offset;
    t->subscribers_offset = subs->offset;
    t->connections_offset = *conns;
    t->conn_stride = g.conn_stride;
    t->conn_capacity = g.conn_capacity;
    t->comp_depth = g.comp_depth;
    t->pub_conn_offset = pub_conn->offset;
    t->sub_conn_offset = sub_conn->offset;
    t->held_offset = held->offset;
    t->held_words = g.held_words;
    // Relaxed stores throughout: the segment's magic (R-SEG) publishes all of it.
    detail::PublisherSlot* ps = seg->at(*pubs, o.max_publishers);
    for (std::uint32_t i = 0; i < o.max_publishers; ++i) {
      ps[i].index = i;
      EventCount::init(&ps[i].space);
    }
    SubscriberSlot* ss = seg->at(*subs, o.max_subscribers);
    for (std::uint32_t j = 0; j < o.max_subscribers; ++j) {
      ss[j].index = j;
      EventCount::init(&ss[j].ec);
    }
    auto* pc = seg->at(*pub_conn, std::uint64_t{o.max_publishers} * o.max_subscribers);
    auto* sc = seg->at(*sub_conn, std::uint64_t{o.max_publishers} * o.max_subscribers);
    for (std::uint64_t n = 0; n < std::uint64_t{o.max_publishers} * o.max_subscribers; ++n) {
      pc[n].store(detail::kNoConn, std::memory_order_relaxed);
      sc[n].store(detail::kNoConn, std::memory_order_relaxed);
    }
  }
  auto pref = ChunkPool::place(*seg, po);
  if (!pref) return fail(pref.error());
  t->topic_id = id;
  t->kind = static_cast<std::uint32_t>(o.kind);
  t->overflow = static_cast<std::uint32_t>(o.overflow);
  t->depth = o.depth;
  t->max_size = o.max_size;
  t->attrs_max = o.attrs_max;
  t->pool_offset = pref->offset;
  t->waiters_offset = wref->offset;
  t->waiter_count = kWaiterRecords;
  put_name(t->name, &t->name_len, name);
  EventCount::init(&t->not_empty);
  EventCount::init(&t->space);
  seg->set_root(*tref);
  seg->publish();
  seg->unmap();
  return open(domain, id);  // attach through the same validation every client uses
}

Result<TopicHandle> TopicHandle::open(std::string_view domain, std::uint64_t id) {
  const std::string seg_name = topic_segment_name(domain, id);
  auto seg = Segment::open(seg_name, {.writable = true, .expect_kind = kTopicKind});
  if (!seg) return seg.error();
  auto bad = [&](const std::string& what) {
    return Error(Errc::foreign_segment, "topic segment " + quoted(seg_name) + ": " + what);
  };
  if (!seg->in_bounds(seg->header().root_offset, sizeof(TopicShared))) return bad("root outside the mapping");
  TopicHandle h;
  h.t_ = seg->root<TopicShared>();
  TopicShared* t = h.t_;
  // Geometry is read once, here, and checked; the handle keeps its own copy.
  const std::uint32_t kind = t->kind;
  if (kind != 1 && kind != 2) return bad("unknown kind " + std::to_string(kind));
  const std::uint32_t name_len = t->name_len;
  if (name_len > kMaxTopicNameLen) return bad("bad name length");
  h.kind_ = static_cast<TopicKind>(kind);
  h.overflow_ = t->overflow == 2 ? Overflow::block : Overflow::drop_oldest;
  h.depth_ = t->depth;
  h.max_size_ = t->max_size;
  h.attrs_max_ = t->attrs_max;
  h.name_.assign(t->name, name_len);
  if (h.depth_ < 2 || !std::has_single_bit(h.depth_) || h.depth_ > (1u << 20)) return bad("bad depth");
  if (h.max_size_ < 1 || h.max_size_ > (1ULL << 30) || h.attrs_max_ > 4096) return bad("bad sizes");
  auto pool = ChunkPool::attach(*seg, Ref<ChunkPoolShared>{t->pool_offset});
  if (!pool) return pool.error();
  // Overflow-safe: each term is at most 2^30 and 2^12.
  if (pool->chunk_size() < sizeof(MessageHeader) + std::uint64_t{h.attrs_max_} + h.max_size_)
    return bad("chunks too small");
  const std::uint32_t waiters = t->waiter_count;
  if (waiters > (1u << 16) ||
      !seg->in_bounds(t->waiters_offset, std::uint64_t{waiters} * sizeof(WaiterRecord)) ||
      t->waiters_offset % alignof(WaiterRecord) != 0)
    return bad("waiter records outside the mapping");
  h.waiters_.records = waiters > 0 ? seg->at(Ref<WaiterRecord>{t->waiters_offset}, waiters) : nullptr;
  h.waiters_.capacity = waiters;
  h.waiters_.hwm = &t->waiter_hwm;
  if (h.kind_ == TopicKind::queue) {
    if (pool->ring_count() != 2 || h.depth_ > pool->ring(kQueueRing).capacity())
      return bad("queue ring does not match the depth");
  } else {
    StreamView& v = h.stream_;
    v.max_publishers = t->max_publishers;
    v.max_subscribers = t->max_subscribers;
    v.conn_capacity = t->conn_capacity;
    v.depth = h.depth_;
    v.comp_depth = t->comp_depth;
    v.conn_stride = t->conn_stride;
    v.held_words = t->held_words;
    const std::uint64_t pairs = std::uint64_t{v.max_publishers} * v.max_subscribers;
    if (v.max_publishers < 1 || v.max_publishers > kMaxStreamPorts || v.max_subscribers < 1 ||
        v.max_subscribers > kMaxStreamPorts || v.conn_capacity > 2 * pairs)
      return bad("bad stream geometry");
    if (v.comp_depth < 2 || !std::has_single_bit(v.comp_depth) || v.comp_depth > (1u << 22) ||
        v.conn_stride <
            sizeof(detail::ConnectionShared) + v.depth * detail::kStreamSlotStride + v.comp_depth * 8 ||
        v.conn_stride % detail::kSlotPair != 0 || v.held_words < (pool->chunk_count() + 63) / 64 ||
        v.held_words > (1u << 26))
      return bad("bad stream geometry");
    if (pool->ring_count() != 1) return bad("a stream's pool has rings");
    if (!seg->in_bounds(t->publishers_offset, v.max_publishers * sizeof(detail::PublisherSlot)) ||
        t->publishers_offset % kCacheLine != 0 ||
        !seg->in_bounds(t->subscribers_offset, v.max_subscribers * sizeof(SubscriberSlot)) ||
        t->subscribers_offset % kCacheLine != 0 ||
        !seg->in_bounds(t->connections_offset, std::uint64_t{v.conn_capacity} * v.conn_stride) ||
        t->connections_offset % detail::kSlotPair != 0 || !seg->in_bounds(t->pub_conn_offset, pairs * 4) ||
        t->pub_conn_offset % 4 != 0 || !seg->in_bounds(t->sub_conn_offset, pairs * 4) ||
        t->sub_conn_offset % 4 != 0 ||
        !seg->in_bounds(t->held_offset, v.max_subscribers * 2 * v.held_words * 8) || t->held_offset % 8 != 0)
      return bad("stream parts outside the mapping");
    v.pubs = reinterpret_cast<detail::PublisherSlot*>(seg->base() + t->publishers_offset);
    v.subs = reinterpret_cast<SubscriberSlot*>(seg->base() + t->subscribers_offset);
    v.conns = seg->base() + t->connections_offset;
    v.pub_conn = reinterpret_cast<std::atomic<std::uint32_t>*>(seg->base() + t->pub_conn_offset);
    v.sub_conn = reinterpret_cast<std::atomic<std::uint32_t>*>(seg->base() + t->sub_conn_offset);
    v.held = reinterpret_cast<std::atomic<std::uint64_t>*>(seg->base() + t->held_offset);
    v.generation = &t->generation;
  }
  h.pool_ = std::move(pool).value();
  h.seg_ = std::move(seg).value();
  return h;
}

Status TopicHandle::remove(std::string_view domain, std::uint64_t id) {
  return Segment::remove(topic_segment_name(domain, id));
}

TopicHandle& TopicHandle::operator=(TopicHandle&& o) noexcept {
  if (this != &o) {
    held_ = std::move(o.held_);
    seg_ = std::move(o.seg_);
    t_ = std::exchange(o.t_, nullptr);
    waiters_ = std::exchange(o.waiters_, WaiterTable{});
    stream_ = std::exchange(o.stream_, StreamView{});
    kind_ = o.kind_;
    overflow_ = o.overflow_;
    depth_ = std::exchange(o.depth_, 0);
    max_size_ = o.max_size_;
    attrs_max_ = o.attrs_max_;
    name_ = std::move(o.name_);
    // Relaxed: moving a handle is not concurrent with its use.
    record_.store(o.record_.exchange(-1, std::memory_order_relaxed), std::memory_order_relaxed);
    pool_ = o.pool_;
  }
  return *this;
}

void poll_pause(std::chrono::nanoseconds left) noexcept {
  const auto d = std::min<std::chrono::nanoseconds>(left, std::chrono::milliseconds(1));
  const timespec ts{0, static_cast<long>(d.count())};
  ::nanosleep(&ts, nullptr);
}

// ---- waiter records ----

WaiterRecord* TopicHandle::my_record() noexcept {
  // Acquire: pairs with the release store below, made after the record was covered by the mark, so this
  // thread's W1 comes after that cover (see eventcount.hpp, "The mark").
  const std::int32_t r = record_.load(std::memory_order_acquire);
  const std::uint64_t me = identity().value;
  // Owned by us, the record stays covered: the supervisor lowers the mark only past free records.
  if (r >= 0 && static_cast<std::uint32_t>(r) < waiters_.capacity &&
      waiters_.records[r].owner.load(std::memory_order_relaxed) == me)
    return &waiters_.records[r];
  std::uint32_t index = 0;
  WaiterRecord* rec = waiters_.claim(me, &index);
  if (rec != nullptr) record_.store(static_cast<std::int32_t>(index), std::memory_order_release);
  return rec;
}

}  // namespace shmbus
