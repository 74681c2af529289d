#include "shmbus/topic.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <ctime>
#include <unordered_set>
#include <utility>

#include "shmbus/paths.hpp"

namespace shmbus {
namespace {

constexpr std::string_view kTopicKind = "topic";
constexpr std::string_view kDirectoryKind = "directory";
constexpr std::uint32_t kQueueRing = 1;

std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

std::uint64_t round_depth(std::uint64_t d) {
  return std::bit_ceil(d < 2 ? std::uint64_t{2} : d);
}

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
    // Every subscriber ring full, plus chunks held as samples and loans.
    p.chunk_count = static_cast<std::uint32_t>(depth * o.max_subscribers + 16 + 4 * o.max_subscribers);
    p.ring_capacities.assign(o.max_subscribers, depth);
  }
  return p;
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
  if (o.max_subscribers < 1 || o.max_subscribers > kMaxSubscribers)
    return Error(Errc::invalid_argument, "max subscribers " + std::to_string(o.max_subscribers) +
                                             " must be from 1 to " + std::to_string(kMaxSubscribers));
  if (o.attrs_max > 4096) return Error(Errc::invalid_argument, "attrs_max must be at most 4096 bytes");
  const auto p = pool_options(o);
  const double bytes = static_cast<double>(p.chunk_count) * static_cast<double>(p.chunk_size);
  if (bytes > 64.0 * (1ULL << 30))
    return Error(Errc::invalid_argument,
                 "topic would need " + std::to_string(static_cast<std::uint64_t>(bytes)) +
                     " bytes of chunks (depth x subscribers x max size); lower one of them");
  return {};
}

// ---- attributes ----

bool encode_attrs(const Attributes& attrs, std::byte* out, std::size_t cap, std::uint32_t* size,
                  std::string* why) {
  std::size_t n = 0;
  for (const auto& [key, val] : attrs) {
    if (key.empty() || key.size() > 255) {
      if (why) *why = "attribute key " + quoted(key) + " must be 1 to 255 bytes";
      return false;
    }
    const std::size_t vlen = val.is_int ? 8 : val.s.size();
    if (vlen > 0xffff) {
      if (why) *why = "attribute " + quoted(key) + ": value longer than 65535 bytes";
      return false;
    }
    const std::size_t need = 4 + key.size() + vlen;
    if (n + need > cap) {
      if (why) *why = "attributes need more than the topic's " + std::to_string(cap) + " bytes";
      return false;
    }
    out[n] = static_cast<std::byte>(val.is_int ? 2 : 1);
    out[n + 1] = static_cast<std::byte>(key.size());
    const auto v16 = static_cast<std::uint16_t>(vlen);
    std::memcpy(out + n + 2, &v16, 2);
    std::memcpy(out + n + 4, key.data(), key.size());
    if (val.is_int)
      std::memcpy(out + n + 4 + key.size(), &val.i, 8);
    else
      std::memcpy(out + n + 4 + key.size(), val.s.data(), vlen);
    n += need;
  }
  *size = static_cast<std::uint32_t>(n);
  return true;
}

namespace {
template <typename F>
void walk_attrs(const std::byte* in, std::uint32_t size, F&& f) {
  std::size_t n = 0;
  while (n + 4 <= size) {
    const auto type = static_cast<std::uint8_t>(in[n]);
    const auto klen = static_cast<std::uint8_t>(in[n + 1]);
    std::uint16_t vlen;
    std::memcpy(&vlen, in + n + 2, 2);
    if ((type != 1 && type != 2) || (type == 2 && vlen != 8) || n + 4 + klen + vlen > size) return;
    std::string_view key(reinterpret_cast<const char*>(in + n + 4), klen);
    AttrValue v;
    if (type == 2) {
      v.is_int = true;
      std::memcpy(&v.i, in + n + 4 + klen, 8);
    } else {
      v.s.assign(reinterpret_cast<const char*>(in + n + 4 + klen), vlen);
    }
    if (!f(key, std::move(v))) return;
    n += 4 + klen + vlen;
  }
}
}  // namespace

Attributes decode_attrs(const std::byte* in, std::uint32_t size) {
  Attributes out;
  walk_attrs(in, size, [&](std::string_view k, AttrValue v) {
    out.emplace_back(std::string(k), std::move(v));
    return true;
  });
  return out;
}

std::optional<AttrValue> find_attr(const std::byte* in, std::uint32_t size, std::string_view key) {
  std::optional<AttrValue> r;
  walk_attrs(in, size, [&](std::string_view k, AttrValue v) {
    if (k != key) return true;
    r = std::move(v);
    return false;
  });
  return r;
}

// ---- directory ----

Result<DirectoryView> DirectoryView::open(std::string_view domain) {
  if (auto ok = check_domain_name(domain); !ok) return ok.error();
  auto seg =
      Segment::open(directory_segment_name(domain), {.writable = false, .expect_kind = kDirectoryKind});
  if (!seg) return seg.error();
  if (seg->header().root_offset == 0 || !seg->in_bounds(seg->header().root_offset, sizeof(DirectoryShared)))
    return Error(Errc::truncated, "directory of domain " + quoted(domain) + " is too small");
  DirectoryView v;
  v.seg_ = std::move(seg).value();
  v.d_ = v.seg_.root<DirectoryShared>();
  if (v.d_->max_topics > kMaxTopics) return Error(Errc::foreign_segment, "directory has a bad topic count");
  return v;
}

std::optional<TopicInfo> DirectoryView::read_entry(const TopicEntry& e) const {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::uint64_t v1 = e.version.load(std::memory_order_acquire);  // A8: pairs with R8.
    if (v1 & 1) continue;
    TopicInfo info;
    info.id = e.topic_id;
    info.kind = static_cast<TopicKind>(e.kind);
    const std::uint32_t len = e.name_len <= kMaxTopicNameLen ? e.name_len : 0;
    info.name.assign(e.name, len);
    std::atomic_thread_fence(std::memory_order_acquire);  // the copy happens before the re-check
    if (e.version.load(std::memory_order_relaxed) != v1) continue;
    if (info.id == 0) return std::nullopt;
    return info;
  }
  return std::nullopt;
}

std::optional<TopicInfo> DirectoryView::find(std::string_view name) const {
  for (std::uint32_t i = 0; i < d_->max_topics; ++i) {
    auto e = read_entry(d_->entries[i]);
    if (e && e->name == name) return e;
  }
  return std::nullopt;
}

std::vector<TopicInfo> DirectoryView::list() const {
  std::vector<TopicInfo> out;
  for (std::uint32_t i = 0; i < d_->max_topics; ++i)
    if (auto e = read_entry(d_->entries[i])) out.push_back(*e);
  return out;
}

Result<DirectoryWriter> DirectoryWriter::create_or_adopt(std::string_view domain, unsigned mode,
                                                         std::string* replaced_reason, gid_t group) {
  if (auto ok = check_domain_name(domain); !ok) return ok.error();
  const std::string name = directory_segment_name(domain);
  DirectoryWriter w;
  w.domain_ = std::string(domain);
  auto seg = Segment::open(name, {.writable = true, .expect_kind = kDirectoryKind});
  if (seg && seg->header().root_offset != 0 &&
      seg->in_bounds(seg->header().root_offset, sizeof(DirectoryShared)) &&
      seg->root<DirectoryShared>()->max_topics == kMaxTopics) {
    w.seg_ = std::move(seg).value();
    w.d_ = w.seg_.root<DirectoryShared>();
    // An entry left odd by a broker killed mid-write: finish it as "free" (its topic is re-validated by
    // the adopting broker anyway).
    for (auto& e : w.d_->entries) {
      if (e.version.load(std::memory_order_relaxed) & 1) {
        e.topic_id = 0;
        e.version.fetch_add(1, std::memory_order_release);
      }
    }
    return w;
  }
  if (!seg && seg.error().code() != Errc::not_found) {
    if (replaced_reason) *replaced_reason = seg.error().message();
    (void)Segment::remove(name);
  } else if (seg) {
    if (replaced_reason) *replaced_reason = "directory segment " + quoted(name) + " has an unexpected layout";
    seg->unmap();
    (void)Segment::remove(name);
  }
  auto created = Segment::create(name, {.size = sizeof(SegmentHeader) + sizeof(DirectoryShared) + kCacheLine,
                                        .mode = mode == 0 ? 0644u : mode,
                                        .group = group,
                                        .kind = kDirectoryKind});
  if (!created) return created.error();
  auto ref = created->allocate<DirectoryShared>(1, kCacheLine);
  if (!ref) return ref.error();
  DirectoryShared* d = created->at(*ref);
  d->max_topics = kMaxTopics;
  d->next_topic_id = 1;
  created->set_root(*ref);
  created->publish();
  w.seg_ = std::move(created).value();
  w.d_ = d;
  return w;
}

Result<std::uint64_t> DirectoryWriter::add(std::string_view name, TopicKind kind) {
  if (auto ok = check_topic_name(name); !ok) return ok.error();
  if (find(name)) return Error(Errc::already_exists, "topic " + quoted(name) + " already exists");
  for (auto& e : d_->entries) {
    if (e.topic_id != 0) continue;
    const std::uint64_t id = d_->next_topic_id++;
    // R8: seqlock write. Odd first, fence so the field stores cannot move above it, even last.
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    e.topic_id = id;
    e.kind = static_cast<std::uint32_t>(kind);
    put_name(e.name, &e.name_len, name);
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    d_->generation.fetch_add(1, std::memory_order_release);
    return id;
  }
  return Error(Errc::no_space, "the directory holds " + std::to_string(kMaxTopics) + " topics already");
}

bool DirectoryWriter::remove(std::string_view name) {
  for (auto& e : d_->entries) {
    if (e.topic_id == 0 || std::string_view(e.name, e.name_len) != name) continue;
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    e.topic_id = 0;
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    d_->generation.fetch_add(1, std::memory_order_release);
    return true;
  }
  return false;
}

std::vector<TopicInfo> DirectoryWriter::list() const {
  std::vector<TopicInfo> out;
  for (auto& e : d_->entries)
    if (e.topic_id != 0)
      out.push_back({e.topic_id, static_cast<TopicKind>(e.kind), std::string(e.name, e.name_len)});
  return out;
}

std::optional<TopicInfo> DirectoryWriter::find(std::string_view name) const {
  for (auto& e : d_->entries)
    if (e.topic_id != 0 && std::string_view(e.name, e.name_len) == name)
      return TopicInfo{e.topic_id, static_cast<TopicKind>(e.kind), std::string(name)};
  return std::nullopt;
}

void DirectoryWriter::unlink() {
  (void)Segment::remove(directory_segment_name(domain_));
}

// ---- topic segments ----

Result<TopicHandle> TopicHandle::create(std::string_view domain, std::uint64_t id, std::string_view name,
                                        const TopicOptions& options) {
  if (auto ok = check_topic_name(name); !ok) return ok.error();
  if (auto ok = check_topic_options(options); !ok) return ok.error();
  TopicOptions o = options;
  o.depth = round_depth(o.depth);
  if (o.kind == TopicKind::queue) o.max_subscribers = 0;
  const ChunkPoolOptions po = pool_options(o);
  const std::size_t size = sizeof(SegmentHeader) + sizeof(TopicShared) + kCacheLine +
                           (o.max_subscribers + 1) * sizeof(SubscriberSlot) +
                           kWaiterRecords * sizeof(WaiterRecord) + kCacheLine + ChunkPool::footprint(po) +
                           4096;
  const std::string seg_name = topic_segment_name(domain, id);
  auto seg = Segment::create(seg_name, {.size = size, .mode = o.mode, .group = o.group, .kind = kTopicKind});
  if (!seg) return seg.error();
  auto fail = [&](const Error& e) {
    (void)Segment::remove(seg_name);
    return e;
  };
  auto tref = seg->allocate<TopicShared>(1, kCacheLine);
  if (!tref) return fail(tref.error());
  Ref<SubscriberSlot> sref{};
  if (o.max_subscribers > 0) {
    auto s = seg->allocate<SubscriberSlot>(o.max_subscribers, kCacheLine);
    if (!s) return fail(s.error());
    sref = *s;
  }
  auto wref = seg->allocate<WaiterRecord>(kWaiterRecords, kCacheLine);
  if (!wref) return fail(wref.error());
  auto pref = ChunkPool::place(*seg, po);
  if (!pref) return fail(pref.error());
  TopicShared* t = seg->at(*tref);
  t->topic_id = id;
  t->kind = static_cast<std::uint32_t>(o.kind);
  t->overflow = static_cast<std::uint32_t>(o.overflow);
  t->depth = o.depth;
  t->max_size = o.max_size;
  t->max_subscribers = o.max_subscribers;
  t->attrs_max = o.attrs_max;
  t->pool_offset = pref->offset;
  t->subscribers_offset = sref.offset;
  t->waiters_offset = wref->offset;
  t->waiter_count = kWaiterRecords;
  put_name(t->name, &t->name_len, name);
  EventCount::init(&t->not_empty);
  EventCount::init(&t->space);
  for (std::uint32_t i = 0; i < o.max_subscribers; ++i) {
    SubscriberSlot* s = seg->at(sref, o.max_subscribers) + i;
    s->ring = i + 1;
    EventCount::init(&s->ec);
  }
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
  if (t->kind != 1 && t->kind != 2) return bad("unknown kind " + std::to_string(t->kind));
  if (t->name_len > kMaxTopicNameLen || t->max_subscribers > kMaxSubscribers) return bad("bad header");
  if (t->max_subscribers > 0 &&
      !seg->in_bounds(t->subscribers_offset, std::uint64_t{t->max_subscribers} * sizeof(SubscriberSlot)))
    return bad("subscriber slots outside the mapping");
  auto pool = ChunkPool::attach(*seg, Ref<ChunkPoolShared>{t->pool_offset});
  if (!pool) return pool.error();
  const std::uint32_t want_rings = t->kind == 2 ? 2 : t->max_subscribers + 1;
  if (pool->ring_count() != want_rings) return bad("ring count does not match the kind");
  if (pool->chunk_size() < sizeof(MessageHeader) + t->attrs_max + t->max_size) return bad("chunks too small");
  if (t->waiter_count > (1u << 16) ||
      !seg->in_bounds(t->waiters_offset, std::uint64_t{t->waiter_count} * sizeof(WaiterRecord)) ||
      t->waiters_offset % alignof(WaiterRecord) != 0)
    return bad("waiter records outside the mapping");
  if (t->depth < 2 || !std::has_single_bit(t->depth) || t->depth > pool->ring(1).capacity())
    return bad("depth " + std::to_string(t->depth) + " does not fit the rings");
  h.waiters_.records =
      t->waiter_count > 0 ? seg->at(Ref<WaiterRecord>{t->waiters_offset}, t->waiter_count) : nullptr;
  h.waiters_.capacity = t->waiter_count;
  h.waiters_.hwm = &t->waiter_hwm;
  h.depth_ = t->depth;
  h.pool_ = std::move(pool).value();
  h.slots_ = t->max_subscribers > 0 ? seg->at(Ref<SubscriberSlot>{t->subscribers_offset}, t->max_subscribers)
                                    : nullptr;
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
    slots_ = std::exchange(o.slots_, nullptr);
    waiters_ = std::exchange(o.waiters_, WaiterTable{});
    depth_ = std::exchange(o.depth_, 0);
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

// ---- data path ----

TopicHandle::IoStatus TopicHandle::allocate(std::uint32_t& chunk, const Deadline& deadline) noexcept {
  if (pool_.try_allocate(chunk) == RingStatus::ok) return IoStatus::ok;
  return wait_for(
             WaitOn::space, [&] { return pool_.try_allocate(chunk) == RingStatus::ok; }, deadline)
             ? IoStatus::ok
             : IoStatus::no_chunk;
}

void TopicHandle::release(std::uint32_t chunk) noexcept {
  pool_.release(chunk);
  notify(WaitOn::space);
}

TopicHandle::IoStatus TopicHandle::push_queue(std::uint32_t chunk, const Deadline& deadline) noexcept {
  // Below depth, push. The check and the push are two steps, so concurrent producers may overshoot depth
  // by one message each; the ring has room for every chunk, so the push itself never fails for room.
  const auto room = [&] {
    return pool_.ring(kQueueRing).size_approx() < depth_ &&
           pool_.try_push(kQueueRing, chunk) == RingStatus::ok;
  };
  if (!wait_for(WaitOn::space, room, deadline)) return IoStatus::timed_out;
  notify(WaitOn::not_empty);
  return IoStatus::ok;
}

TopicHandle::IoStatus TopicHandle::requeue(std::uint32_t chunk) noexcept {
  if (pool_.try_push(kQueueRing, chunk) != RingStatus::ok) return IoStatus::timed_out;
  notify(WaitOn::not_empty);
  return IoStatus::ok;
}

TopicHandle::IoStatus TopicHandle::publish_stream(std::uint32_t chunk, const Deadline& deadline) noexcept {
  t_->published.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
  // A7: pairs with R7 in activate_slot(): a set bit means the slot's ring was drained before.
  std::uint64_t mask = t_->active_mask.load(std::memory_order_acquire);
  if (mask == 0) {
    release(chunk);
    return IoStatus::no_subscribers;
  }
  IoStatus result = IoStatus::ok;
  const MessageHeader* src = header(chunk);
  const std::size_t used = sizeof(MessageHeader) + t_->attrs_max + src->payload_size;
  while (mask != 0) {
    const auto i = static_cast<std::uint32_t>(std::countr_zero(mask));
    mask &= mask - 1;
    std::uint32_t c = chunk;
    if (mask != 0) {  // not the last subscriber: give it a copy
      if (allocate(c, overflow() == Overflow::block ? deadline : Deadline::now()) != IoStatus::ok) {
        slots_[i].gap.fetch_add(1, std::memory_order_relaxed);  // reported by its next message
        t_->dropped.fetch_add(1, std::memory_order_relaxed);
        result = IoStatus::timed_out;
        continue;
      }
      std::memcpy(pool_.data(c), pool_.data(chunk), used);
    }
    SubscriberSlot& s = slots_[i];
    // The chunk is ours alone (a copy, or the original for the last subscriber): stamp the tail misses.
    // Load first: the exchange (a write) is needed only in the rare case that there is a gap to report.
    const auto gap = s.gap.load(std::memory_order_relaxed) == 0
                         ? 0u
                         : static_cast<std::uint32_t>(s.gap.exchange(0, std::memory_order_relaxed));
    header(c)->missed_before = gap;
    const auto pushed = [&] { return pool_.try_push(s.ring, c) == RingStatus::ok; };
    if (overflow() == Overflow::drop_oldest) {
      while (!pushed()) {
        std::uint32_t old;
        if (pool_.try_pop(s.ring, old) == RingStatus::ok) {
          release(old);  // wakes an allocator that waits for a chunk
          s.dropped.fetch_add(1, std::memory_order_relaxed);
          t_->dropped.fetch_add(1, std::memory_order_relaxed);
        }
      }
    } else if (!wait_for(WaitOn::space, pushed, deadline)) {
      release(c);
      s.gap.fetch_add(gap + 1, std::memory_order_relaxed);  // this one and those it was to report
      t_->dropped.fetch_add(1, std::memory_order_relaxed);
      result = IoStatus::timed_out;
      continue;
    }
    EventCount(&s.ec).notify();
  }
  return result;
}

// ---- broker ----

std::uint64_t TopicHandle::drain_ring(std::uint32_t ring) {
  std::uint64_t n = 0;
  std::uint32_t c;
  while (pool_.try_pop(ring, c) == RingStatus::ok) {
    pool_.release(c);
    ++n;
  }
  if (n != 0) notify(WaitOn::space);  // an allocator may wait for these chunks
  return n;
}

Result<std::uint32_t> TopicHandle::activate_slot(OwnerId owner, std::uint64_t port) {
  if (kind() != TopicKind::stream)
    return Error(Errc::invalid_argument,
                 "topic " + quoted(name()) + " is a queue: consume it, do not subscribe");
  if (auto existing = find_slot(owner, port)) {
    // R7 as in adopt_slot(): the bit may be missing if a broker died between the two stores.
    t_->active_mask.fetch_or(1ULL << *existing, std::memory_order_release);
    return *existing;
  }
  // A free slot that nobody can come back to first (never used, or its last owner is dead): a live owner
  // whose slot was freed while its connection was down may still reattach to its own.
  for (int pass = 0; pass < 2; ++pass)
    for (std::uint32_t i = 0; i < t_->max_subscribers; ++i) {
      SubscriberSlot& s = slots_[i];
      if (s.state.load(std::memory_order_relaxed) != kSlotFree) continue;
      if (const OwnerId last{s.last_owner.load(std::memory_order_relaxed)};
          pass == 0 && last.valid() && liveness(last) != Liveness::dead)
        continue;
      s.last_owner.store(0, std::memory_order_relaxed);  // a new subscription, not a return
      if (auto st = adopt_slot(i, owner, port); !st) return st.error();
      return i;
    }
  return Error(Errc::no_space, "topic " + quoted(name()) + " has all its " +
                                   std::to_string(t_->max_subscribers) +
                                   " subscriber slots taken (raise max_subscribers)");
}

Status TopicHandle::adopt_slot(std::uint32_t i, OwnerId owner, std::uint64_t port) {
  if (kind() != TopicKind::stream || i >= t_->max_subscribers)
    return Error(Errc::invalid_argument,
                 "topic " + quoted(name()) + " has no subscriber slot " + std::to_string(i));
  SubscriberSlot& s = slots_[i];
  if (s.state.load(std::memory_order_relaxed) == kSlotActive) {
    if (s.owner.load(std::memory_order_relaxed) != owner.value)
      return Error(Errc::already_exists, "subscriber slot " + std::to_string(i) + " of topic " +
                                             quoted(name()) + " belongs to another process");
    // Re-registration (a new broker, a reconnect). The bit may be missing: a broker killed between the
    // state store and the fetch_or below. R7 as below; a no-op when the bit is set.
    s.port.store(port, std::memory_order_relaxed);
    t_->active_mask.fetch_or(1ULL << i, std::memory_order_release);
    return {};
  }
  const OwnerId last{s.last_owner.load(std::memory_order_relaxed)};
  const bool returning = last == owner;
  if (last.valid() && !returning)
    return Error(Errc::closed,
                 "subscriber slot " + std::to_string(i) + " of topic " + quoted(name()) +
                     " was given to another subscriber while this one was away: subscribe again");
  const std::uint64_t drained = drain_ring(s.ring);
  // Only the previous owner's threads can be counted in the slot's EventCount. Dead, it left what it left
  // (killed while parked): zero it. Alive (the same process coming back, or one whose slot was freed
  // under a thread still parked here), its count is exact and that thread will withdraw it.
  if (!last.valid() || liveness(last) == Liveness::dead) EventCount(&s.ec).reset_sleepers();
  // Relaxed stores: published by R7 below.
  if (returning) {
    // The owner comes back to the slot it had (freed while its connection was down): it missed what the
    // sweep drained from the ring (already in `dropped`), what we drained now, and every message
    // published while the slot was free. Its next sample reports them as missed.
    const std::uint64_t published = t_->published.load(std::memory_order_relaxed);
    const std::uint64_t since = published - s.freed_at.load(std::memory_order_relaxed);
    s.dropped.fetch_add(drained + (since < (1ULL << 62) ? since : 0), std::memory_order_relaxed);
  } else {
    s.dropped.store(0, std::memory_order_relaxed);
    s.gap.store(0, std::memory_order_relaxed);
  }
  s.owner.store(owner.value, std::memory_order_relaxed);
  s.last_owner.store(owner.value, std::memory_order_relaxed);
  s.port.store(port, std::memory_order_relaxed);
  s.delivered.store(0, std::memory_order_relaxed);
  s.state.store(kSlotActive, std::memory_order_relaxed);
  SHMBUS_FAULT_POINT("topic.activate.before_mask");  // the state says active, the mask does not yet
  t_->active_mask.fetch_or(1ULL << i, std::memory_order_release);  // R7
  return {};
}

void TopicHandle::free_slot(std::uint32_t i) {
  if (i >= t_->max_subscribers) return;
  SubscriberSlot& s = slots_[i];
  t_->active_mask.fetch_and(~(1ULL << i), std::memory_order_release);
  SHMBUS_FAULT_POINT("topic.free.after_mask");  // the mask says free, the state does not yet
  if (s.state.load(std::memory_order_relaxed) == kSlotActive)
    t_->delivered.fetch_add(s.delivered.exchange(0, std::memory_order_relaxed), std::memory_order_relaxed);
  s.freed_at.store(t_->published.load(std::memory_order_relaxed), std::memory_order_relaxed);
  s.state.store(kSlotFree, std::memory_order_relaxed);
  s.owner.store(0, std::memory_order_relaxed);
  // Counted on the slot (not the topic): only its owner, should it come back (adopt_slot), missed them.
  s.dropped.fetch_add(drain_ring(s.ring), std::memory_order_relaxed);
}

std::optional<std::uint32_t> TopicHandle::find_slot(OwnerId owner, std::uint64_t port) const {
  for (std::uint32_t i = 0; i < t_->max_subscribers; ++i)
    if (slots_[i].state.load(std::memory_order_relaxed) == kSlotActive &&
        slots_[i].owner.load(std::memory_order_relaxed) == owner.value &&
        slots_[i].port.load(std::memory_order_relaxed) == port)
      return i;
  return std::nullopt;
}

std::uint32_t TopicHandle::repair_mask() {
  std::uint32_t changed = 0;
  for (std::uint32_t i = 0; i < t_->max_subscribers; ++i) {
    const bool active = slots_[i].state.load(std::memory_order_relaxed) == kSlotActive;
    const bool set = (t_->active_mask.load(std::memory_order_relaxed) >> i) & 1;
    if (active == set) continue;
    ++changed;
    // R7 (release), as in adopt_slot() and free_slot().
    if (active)
      t_->active_mask.fetch_or(1ULL << i, std::memory_order_release);
    else
      t_->active_mask.fetch_and(~(1ULL << i), std::memory_order_release);
  }
  return changed;
}

std::uint64_t TopicHandle::retry_held() {
  std::uint64_t requeued = 0;
  std::vector<std::uint32_t> still;
  for (std::uint32_t c : held_) {
    const std::uint32_t ring = pool_.header(c).last_ring.load(std::memory_order_relaxed);
    if (kind() == TopicKind::queue && ring == kQueueRing) {
      if (requeue(c) == IoStatus::ok) {
        // Counted now that it is back in the queue, as reclaim() counts those it pushes at once.
        pool_.shared()->redelivered.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
        ++requeued;
      } else {
        still.push_back(c);
      }
      continue;
    }
    release(c);
  }
  held_ = std::move(still);
  return requeued;
}

std::uint64_t TopicHandle::drain_free_slots(std::uint64_t* requeued) {
  const std::uint64_t r = retry_held();
  if (requeued != nullptr) *requeued = r;
  std::uint64_t n = 0;
  for (std::uint32_t i = 0; i < t_->max_subscribers; ++i)
    if (slots_[i].state.load(std::memory_order_relaxed) == kSlotFree) {
      const std::uint64_t d = drain_ring(slots_[i].ring);
      slots_[i].dropped.fetch_add(d, std::memory_order_relaxed);  // as in free_slot()
      n += d;
    }
  return n;
}

ReclaimReport TopicHandle::reclaim(OwnerId dead) {
  for (std::uint32_t i = 0; i < waiters_.capacity; ++i)
    if (waiters_.records[i].owner.load(std::memory_order_acquire) == dead.value)
      EventCount::forget(waiters_.records[i]);
  (void)waiters_.lower();  // notifiers scan no further than the records still claimed
  for (std::uint32_t i = 0; i < t_->max_subscribers; ++i) {
    SubscriberSlot& s = slots_[i];
    if (s.state.load(std::memory_order_relaxed) == kSlotActive &&
        s.owner.load(std::memory_order_relaxed) == dead.value)
      free_slot(i);
    // A slot whose latest owner is `dead` is free now (freed here, or earlier when its socket closed),
    // and only that owner's threads can be counted in its EventCount: what it left goes now.
    if (s.last_owner.load(std::memory_order_relaxed) == dead.value &&
        s.state.load(std::memory_order_relaxed) == kSlotFree)
      EventCount(&s.ec).reset_sleepers();
  }
  ReclaimReport rep = pool_.reclaim(
      dead, kind() == TopicKind::queue ? ChunkPool::Policy::redeliver : ChunkPool::Policy::free);
  for (std::uint32_t c : rep.held) held_.push_back(c);
  if (rep.redelivered != 0) notify(WaitOn::not_empty);
  if (rep.freed != 0) notify(WaitOn::space);
  return rep;
}

std::vector<OwnerId> TopicHandle::dead_owners(std::vector<OwnerId>* unknown) const {
  std::unordered_set<std::uint64_t> seen, dead;
  const OwnerId me = identity();
  auto consider = [&](std::uint64_t v) {
    const OwnerId id{v};
    if (!id.valid() || id == me || !seen.insert(v).second) return;
    switch (liveness(id)) {
      case Liveness::dead:
        dead.insert(v);
        break;
      case Liveness::unknown:
        if (unknown != nullptr) unknown->push_back(id);
        break;
      case Liveness::alive:
        break;
    }
  };
  for (std::uint32_t i = 0; i < waiters_.capacity; ++i)
    consider(waiters_.records[i].owner.load(std::memory_order_acquire));
  for (std::uint32_t i = 0; i < pool_.chunk_count(); ++i) {
    const std::uint64_t o = pool_.header(i).owner.load(std::memory_order_acquire);
    if (!ChunkPool::is_queued(o)) {
      consider(o);
    } else if (!pool_.in_ring(i)) {  // a push its pusher may not have finished
      consider(pool_.header(i).pusher.load(std::memory_order_relaxed));
    }
  }
  for (std::uint32_t i = 0; i < t_->max_subscribers; ++i)
    if (slots_[i].state.load(std::memory_order_relaxed) == kSlotActive)
      consider(slots_[i].owner.load(std::memory_order_relaxed));
  std::vector<OwnerId> out;
  for (auto v : dead) out.push_back(OwnerId{v});
  return out;
}

std::uint32_t TopicHandle::active_subscribers() const {
  return static_cast<std::uint32_t>(std::popcount(t_->active_mask.load(std::memory_order_relaxed)));
}

std::uint64_t TopicHandle::delivered_total() const {
  std::uint64_t n = t_->delivered.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < t_->max_subscribers; ++i)
    if (slots_[i].state.load(std::memory_order_relaxed) == kSlotActive)
      n += slots_[i].delivered.load(std::memory_order_relaxed);
  return n;
}

std::uint64_t TopicHandle::queued_messages() const {
  std::uint64_t n = 0;
  for (std::uint32_t r = 1; r < pool_.ring_count(); ++r) n += pool_.ring(r).size_approx();
  return n;
}

}  // namespace shmbus
