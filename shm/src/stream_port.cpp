// The user half of a stream (detail/stream_port.hpp): publishing into connections, receiving from them.
#include "shmbus/detail/stream_port.hpp"

#include <algorithm>
#include <cstring>
#include <ctime>

#include "shmbus/fault.hpp"

namespace shmbus::detail {
namespace {

StreamSlotHeader* header_at(std::byte* slot) {
  return reinterpret_cast<StreamSlotHeader*>(slot);
}

std::uint64_t realtime_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ULL + static_cast<std::uint64_t>(ts.tv_nsec);
}

// The encoded size of `attrs`, or SIZE_MAX when they cannot be encoded (no string is built).
std::size_t attrs_size(AttrList attrs) noexcept {
  if (attrs.empty()) return 0;
  for (const Attr& a : attrs)
    if (a.key.empty() || a.key.size() > 255 || a.value.type() == AttrValue::Type::none ||
        a.value.as_string().size() > 0xffff)
      return SIZE_MAX;
  std::size_t n = 0;
  for (const Attr& a : attrs) {
    std::size_t v = 0;
    switch (a.value.type()) {
      case AttrValue::Type::string:
        v = a.value.as_string().size();
        break;
      case AttrValue::Type::boolean:
        v = 1;
        break;
      default:
        v = 8;
    }
    n += 4 + a.key.size() + v;
  }
  return n;
}

}  // namespace

// ============================================================================================ publisher

Result<std::unique_ptr<StreamPublisher>> StreamPublisher::attach(std::shared_ptr<TopicHandle> topic,
                                                                 std::uint32_t slot, bool stamp) {
  const StreamView& v = topic->stream();
  if (topic->kind() != TopicKind::stream || slot >= v.max_publishers)
    return Error(Errc::protocol_error, "publisher slot " + std::to_string(slot) +
                                           " does not exist in topic \"" + topic->name() + "\"");
  std::unique_ptr<StreamPublisher> p(new StreamPublisher());
  p->topic_ = std::move(topic);
  p->view_ = &p->topic_->stream();
  p->ps_ = p->view_->pubs + slot;
  p->slot_ = slot;
  p->pool_ = p->topic_->pool();
  p->pool_.set_identity(slot_owner(slot));
  // Relaxed: written by the broker before it answered us (the control socket orders them).
  p->id_ = p->ps_->id.load(std::memory_order_relaxed);
  p->seq_ = p->ps_->seq.load(std::memory_order_relaxed);  // a re-attaching publisher continues its sequence
  p->published_ = p->ps_->published.load(std::memory_order_relaxed);
  p->stamp_ = stamp;
  p->block_ = p->topic_->overflow() == Overflow::block;
  const std::uint32_t chunks = p->pool_.chunk_count();
  p->refs_.assign(chunks, 0);
  p->cache_.reserve(chunks);
  p->cache_max_ = std::max<std::size_t>(16, p->view_->depth);
  p->conns_.reserve(p->view_->max_subscribers);
  p->scratch_.reserve(p->view_->max_subscribers);
  p->closing_.reserve(p->view_->conn_capacity);
  p->refresh(p->view_->generation->load(std::memory_order_acquire));  // G1'
  return p;
}

StreamPublisher::~StreamPublisher() {
  // Chunks in the cache go back to the pool; those still out in connections are collected by the broker
  // once it retires this slot (stream_supervisor.hpp). A closed slot's chunks are all the broker's.
  if (!closed_)
    for (std::uint32_t c : cache_) pool_.release(c);
}

void StreamPublisher::refresh(std::uint64_t gen) noexcept {
  if (ps_->state.load(std::memory_order_relaxed) != kPubActive) {
    // The broker retired our slot: from now on its chunks are the broker's to collect. Touch none, then
    // ack, so that the broker knows we stopped.
    closed_ = true;
    conns_.clear();
    closing_.clear();
    cache_.clear();
    gen_ = gen;
    ps_->seen_generation.store(gen, std::memory_order_release);
    return;
  }
  scratch_.clear();
  for (std::uint32_t j = 0; j < view_->max_subscribers; ++j) {
    // Relaxed: ordered by the acquire load of the generation (G1').
    const std::uint32_t k = view_->pub_conn_at(slot_, j).load(std::memory_order_relaxed);
    if (k == kNoConn || k >= view_->conn_capacity) continue;
    ConnectionShared* cs = view_->conn(k);
    if (cs->state.load(std::memory_order_relaxed) != kConnActive || cs->pub != slot_ || cs->sub != j)
      continue;
    auto old = std::find_if(conns_.begin(), conns_.end(), [&](const Conn& c) { return c.k == k; });
    if (old != conns_.end()) {
      scratch_.push_back(*old);
      continue;
    }
    // A new connection: the broker set its positions before it published the table.
    Conn c{};
    c.k = k;
    c.sub = j;
    c.c = cs;
    c.head = cs->head.load(std::memory_order_relaxed);
    c.cached_tail = cs->tail.load(std::memory_order_acquire);  // S2'
    c.comp_tail = cs->comp_tail.load(std::memory_order_relaxed);
    c.wake = &view_->subs[j].ec;
    if (c.head == view_->depth)
      cs->start_seq.store(seq_, std::memory_order_relaxed);  // nothing sent on it yet
    scratch_.push_back(c);
  }
  for (const Conn& c : conns_)
    if (std::none_of(scratch_.begin(), scratch_.end(), [&](const Conn& n) { return n.k == c.k; }) &&
        closing_.size() < closing_.capacity())
      closing_.push_back(c);  // it left the table: finish it (every reference back), then say closed
  conns_.swap(scratch_);
  // A connection made and closed again between two of our refreshes never reached us: we wrote nothing
  // to it and hold no reference on it, so it is done as far as we are concerned.
  for (std::uint32_t k = 0; k < view_->conn_capacity; ++k) {
    ConnectionShared* cs = view_->conn(k);
    if (cs->state.load(std::memory_order_relaxed) != kConnClosing || cs->pub != slot_ ||
        cs->closed.load(std::memory_order_relaxed) != 0 ||
        std::any_of(closing_.begin(), closing_.end(), [&](const Conn& c) { return c.k == k; }) ||
        std::any_of(conns_.begin(), conns_.end(), [&](const Conn& c) { return c.k == k; }))
      continue;  // ours (it closed after we read the table: the next refresh finishes it)
    cs->closed.store(1, std::memory_order_release);
  }
  gen_ = gen;
  // Release: we push to none of the removed connections from now on; the broker may finish them.
  ps_->seen_generation.store(gen, std::memory_order_release);
  drain_all();
}

void StreamPublisher::drain(Conn& c) noexcept {
  std::uint64_t pos = c.comp_tail;
  const std::uint32_t chunks = pool_.chunk_count();
  for (;;) {
    const std::uint64_t cell = view_->comp_cell(c.k, pos).load(std::memory_order_acquire);  // C1'
    if (!completion_at(cell, pos)) break;
    const auto chunk = static_cast<std::uint32_t>(cell);
    ++pos;
    // A chunk we have no reference out for is a subscriber's mistake (or scribbling): ignore it.
    if (chunk >= chunks || refs_[chunk] == 0 || c.outstanding == 0) continue;
    --c.outstanding;
    if (--refs_[chunk] == 0) recycle(chunk);
  }
  if (pos != c.comp_tail) {
    c.comp_tail = pos;
    c.c->comp_tail.store(pos, std::memory_order_release);  // C2: the subscriber may reuse the cells
  }
}

void StreamPublisher::drain_all() noexcept {
  for (Conn& c : conns_) drain(c);
  for (std::size_t i = 0; i < closing_.size();) {
    drain(closing_[i]);
    if (closing_[i].outstanding == 0) {
      SHMBUS_FAULT_POINT("stream.pub.before_closed");
      // Release: the broker frees the connection after this; our last reads of it happened before.
      closing_[i].c->closed.store(1, std::memory_order_release);
      closing_[i] = closing_.back();
      closing_.pop_back();
    } else {
      ++i;
    }
  }
  since_drain_ = 0;
}

void StreamPublisher::recycle(std::uint32_t chunk) noexcept {
  if (closed_) return;  // the broker collects every chunk of a retired slot
  if (cache_.size() < cache_max_) {
    cache_.push_back(chunk);
  } else {
    pool_.release(chunk);
  }
}

bool StreamPublisher::take_chunk(std::uint32_t& chunk) noexcept {
  if (closed_) return false;
  if (cache_.empty()) drain_all();
  if (!cache_.empty()) {
    chunk = cache_.back();
    cache_.pop_back();
    return true;
  }
  return pool_.try_allocate(chunk) == RingStatus::ok;  // stamped with this slot's identity
}

SendStatus StreamPublisher::loan(std::uint32_t& chunk, const Deadline& deadline) noexcept {
  if (topic_->deleted()) return SendStatus::deleted;
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
  if (closed_) return SendStatus::closed;
  if (take_chunk(chunk)) return SendStatus::ok;
  // Chunks come back through our completion rings (subscribers notify our `space`) or, freed by other
  // publishers, through the pool (nobody notifies us): wait in slices of at most 1 ms.
  EventCount ec(&ps_->space);
  for (;;) {
    const auto left = deadline.left();
    if (left <= std::chrono::nanoseconds::zero())
      return take_chunk(chunk) ? SendStatus::ok : SendStatus::no_chunk;
    if (ec.await([&] { return take_chunk(chunk); },
                 std::min<std::chrono::nanoseconds>(left, std::chrono::milliseconds(1))))
      return SendStatus::ok;
  }
}

// Block: pause-polls before parking. A subscriber that is reading frees room within microseconds (at the
// end of its batch), and parking would add a futex wake-up (~5-40 us here) to every full ring.
constexpr std::uint32_t kRoomSpin = 2000;

bool StreamPublisher::room(Conn& c, bool chunk_message, const Deadline& deadline, bool* overwrite) noexcept {
  const std::uint64_t depth = view_->depth;
  if (c.head - c.cached_tail < depth) return true;
  c.cached_tail = c.c->tail.load(std::memory_order_acquire);  // S2': pairs with S2
  if (c.head - c.cached_tail < depth) return true;
  if (!block_) {
    // Drop-oldest: overwrite the oldest slot if its message is inline (S3). A chunk message there may be
    // in the subscriber's hands this very moment: then this subscriber misses the new message instead.
    const auto* oldest = header_at(view_->slot(c.k, c.head - depth));
    (void)chunk_message;
    if (oldest->flags & kSlotInline) {
      *overwrite = true;
      return true;
    }
    return false;
  }
  if (deadline.zero()) return false;
  // Block: wait for the subscriber to make room (it notifies our `space` after each message it takes).
  EventCount ec(&ps_->space);
  const auto left = deadline.left();
  if (left <= std::chrono::nanoseconds::zero()) return false;
  // Also done when the connection stops being active (its subscriber left or died; the broker notifies
  // `space` after closing it): the message is then missed by that subscriber only.
  (void)ec.await(
      [&] {
        c.cached_tail = c.c->tail.load(std::memory_order_acquire);  // S2'
        return c.head - c.cached_tail < depth || c.c->state.load(std::memory_order_relaxed) != kConnActive;
      },
      left, kRoomSpin);
  return c.head - c.cached_tail < depth;
}

template <typename Write>
SendStatus StreamPublisher::fan_out(bool chunk_message, std::uint32_t chunk, const Deadline& deadline,
                                    Write&& write) noexcept {
  ++seq_;
  // Relaxed: single writer; read by a re-attaching successor of this process and by statistics.
  ps_->seq.store(seq_, std::memory_order_relaxed);
  ps_->published.store(++published_, std::memory_order_relaxed);
  if (conns_.empty()) {
    if (chunk_message) recycle(chunk);
    if (!closing_.empty()) drain_all();  // finish departed subscribers' connections even with nobody left
    return SendStatus::no_subscribers;
  }
  bool missed = false;
  for (Conn& c : conns_) {
    bool overwrite = false;
    if (!room(c, chunk_message, deadline, &overwrite)) {
      missed = true;
      c.c->dropped.store(c.c->dropped.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      continue;
    }
    std::byte* slot = view_->slot(c.k, c.head);
    StreamSlotHeader* h = header_at(slot);
    if (overwrite) {
      // S3: the seqlock's writer side. The subscriber copying this slot sees the change and drops it.
      h->seq.store(kSlotBusy, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_release);
      c.c->dropped.store(c.c->dropped.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    write(h, slot + sizeof(StreamSlotHeader));
    h->pub_seq = seq_;
    SHMBUS_FAULT_POINT("stream.pub.before_commit");
    h->seq.store(c.head, std::memory_order_release);  // S1: pairs with S1' in try_receive()
    ++c.head;
    c.c->head.store(c.head, std::memory_order_relaxed);  // informational: overrun skips, recovery
    if (chunk_message) {
      ++refs_[chunk];
      ++c.outstanding;
    }
  }
  // N2 once for every subscriber we wrote to, then N3 for each (eventcount.hpp).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (Conn& c : conns_) EventCount(c.wake).notify_fenced();
  if (chunk_message && refs_[chunk] == 0) recycle(chunk);
  // Take returned chunks now, after the message is out, when the next loan would otherwise have to
  // (its read of the completion cells would then be a cross-core miss before the payload is written).
  if (++since_drain_ >= kDrainEvery || (chunk_message && cache_.empty())) drain_all();
  return missed ? SendStatus::some_missed : SendStatus::ok;
}

SendStatus StreamPublisher::publish(const std::byte* data, std::size_t n, AttrList attrs,
                                    const Deadline& deadline) noexcept {
  if (topic_->deleted()) return SendStatus::deleted;
  // G1': a changed table is applied before this message goes out.
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
  if (closed_) return SendStatus::closed;
  const std::size_t asz = attrs_size(attrs);
  if (n > topic_->max_size() || asz > topic_->attrs_max()) return SendStatus::too_large;
  const std::size_t stamp = stamp_ ? 8 : 0;
  if (n + asz + stamp <= kStreamInlineRoom) {
    const std::uint64_t ts = stamp_ ? realtime_ns() : 0;
    return fan_out(false, 0, deadline, [&](StreamSlotHeader* h, std::byte* p) {
      // Payload first, header last: the header's stores then go out together with the seq store (S1)
      // that follows, on the line the subscriber polls. Header first, a message reaching the slot's
      // second line made the first line travel to the publisher twice (the subscriber's polling takes it
      // back while the second line's store waits): 64-byte round trip 890 -> 440 ns (scripts/bench core).
      if (stamp_) {
        std::memcpy(p, &ts, 8);
        p += 8;
      }
      std::memcpy(p, data, n);
      if (asz != 0) encode_attrs(attrs, p + n);
      h->size = static_cast<std::uint32_t>(n);
      h->flags = static_cast<std::uint16_t>(kSlotInline | (stamp_ ? kSlotStamped : 0));
      h->attrs_size = static_cast<std::uint16_t>(asz);
    });
  }
  std::uint32_t chunk;
  if (const SendStatus st = loan(chunk, deadline); st != SendStatus::ok) return st;
  std::memcpy(topic_->payload(chunk), data, n);
  return publish_chunk(chunk, n, attrs, deadline);
}

SendStatus StreamPublisher::publish_chunk(std::uint32_t chunk, std::size_t n, AttrList attrs,
                                          const Deadline& deadline) noexcept {
  if (topic_->deleted()) {
    recycle(chunk);
    return SendStatus::deleted;
  }
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
  if (closed_) return SendStatus::closed;  // the chunk is the broker's now
  const std::size_t asz = attrs_size(attrs);
  if (n > topic_->max_size() || asz > topic_->attrs_max()) {
    recycle(chunk);
    return SendStatus::too_large;
  }
  // The connection's slot carries size, attribute size and sequence: the chunk's header line is written
  // (and read) only for a timestamp, so an unstamped message costs its payload's lines alone.
  if (stamp_) topic_->header(chunk)->timestamp_ns = realtime_ns();
  if (asz != 0) encode_attrs(attrs, topic_->attrs(chunk));
  return fan_out(true, chunk, deadline, [&](StreamSlotHeader* h, std::byte* p) {
    h->size = static_cast<std::uint32_t>(n);
    h->flags = static_cast<std::uint16_t>(kSlotChunk | (stamp_ ? kSlotStamped : 0));
    h->attrs_size = static_cast<std::uint16_t>(asz);
    StreamChunkRef ref{chunk, 0};
    std::memcpy(p, &ref, sizeof ref);
  });
}

// =========================================================================================== subscriber

Result<std::unique_ptr<StreamSubscriber>> StreamSubscriber::attach(std::shared_ptr<TopicHandle> topic,
                                                                   std::uint32_t slot) {
  const StreamView& v = topic->stream();
  if (topic->kind() != TopicKind::stream || slot >= v.max_subscribers)
    return Error(Errc::protocol_error, "subscriber slot " + std::to_string(slot) +
                                           " does not exist in topic \"" + topic->name() + "\"");
  std::unique_ptr<StreamSubscriber> s(new StreamSubscriber());
  s->topic_ = std::move(topic);
  s->view_ = &s->topic_->stream();
  s->ss_ = s->view_->subs + slot;
  s->held_ = s->view_->held_of(slot);
  s->slot_ = slot;
  s->validate_ = s->topic_->overflow() == Overflow::drop_oldest;
  s->block_ = s->topic_->overflow() == Overflow::block;
  s->tail_batch_ = std::max<std::uint64_t>(1, s->view_->depth / 4);
  s->delivered_ = s->ss_->delivered.load(std::memory_order_relaxed);
  s->conns_.reserve(s->view_->max_publishers);
  s->scratch_.reserve(s->view_->max_publishers);
  s->pending_.reserve(s->topic_->pool().chunk_count());
  s->known_.reserve(4 * std::size_t{s->view_->max_publishers});
  s->refresh(s->view_->generation->load(std::memory_order_acquire));  // G1'
  return s;
}

StreamSubscriber::~StreamSubscriber() = default;

void StreamSubscriber::refresh(std::uint64_t gen) noexcept {
  if (ss_->state.load(std::memory_order_relaxed) != kSlotActive) closed_ = true;
  scratch_.clear();
  for (std::uint32_t i = 0; i < view_->max_publishers; ++i) {
    // Relaxed: ordered by the acquire load of the generation (G1').
    const std::uint32_t k = view_->sub_conn_at(slot_, i).load(std::memory_order_relaxed);
    if (k == kNoConn || k >= view_->conn_capacity) continue;
    ConnectionShared* cs = view_->conn(k);
    const std::uint32_t state = cs->state.load(std::memory_order_relaxed);
    if ((state != kConnActive && state != kConnOrphan) || cs->pub != i || cs->sub != slot_) continue;
    const std::uint64_t pub_id = view_->pubs[i].id.load(std::memory_order_relaxed);
    auto old = std::find_if(conns_.begin(), conns_.end(), [&](const Conn& c) { return c.k == k; });
    if (old != conns_.end()) {
      Conn c = *old;
      c.orphan = state == kConnOrphan;
      scratch_.push_back(c);
      continue;
    }
    Conn c{};
    c.k = k;
    c.pub = i;
    c.c = cs;
    c.tail = cs->tail.load(std::memory_order_relaxed);
    c.shared_tail = c.tail;
    c.comp_head = cs->comp_head.load(std::memory_order_relaxed);
    c.cached_comp_tail = cs->comp_tail.load(std::memory_order_acquire);  // C2'
    c.pub_id = pub_id;
    c.orphan = state == kConnOrphan;
    c.space = &view_->pubs[i].space;
    // A publisher we knew on another connection: keep counting its sequence, so that what we missed in
    // between shows as missed.
    c.last_seq = kNoSeq;
    for (const Conn& o : conns_)
      if (o.pub_id == pub_id && pub_id != 0) c.last_seq = known_seq(o);
    if (c.last_seq == kNoSeq) c.last_seq = recall(pub_id);
    scratch_.push_back(c);
  }
  // Connections that left the table: remember how far their publishers got (read before the ack below,
  // after which the broker may free them).
  for (Conn& o : conns_)
    if (std::none_of(scratch_.begin(), scratch_.end(), [&](const Conn& n) { return n.k == o.k; })) {
      remember(o.pub_id, known_seq(o));
      // Its deferred tail (inline entries only) is not published: the connection may already be another
      // pair's, and the broker has nothing to recover from inline entries.
    }
  if (closed_) {
    // Our slot was closed: connections made and closed while we did not look (we were stopped, say)
    // never reached our table. Where their publishers stood when they connected is what we know of them.
    for (std::uint32_t k = 0; k < view_->conn_capacity; ++k) {
      const ConnectionShared* cs = view_->conn(k);
      if (cs->state.load(std::memory_order_relaxed) != kConnClosing || cs->sub != slot_ ||
          cs->pub >= view_->max_publishers)
        continue;
      const std::uint64_t pub_id = view_->pubs[cs->pub].id.load(std::memory_order_relaxed);
      if (std::none_of(conns_.begin(), conns_.end(), [&](const Conn& o) { return o.pub_id == pub_id; }) &&
          recall(pub_id) == kNoSeq)
        remember(pub_id, cs->start_seq.load(std::memory_order_relaxed));
    }
  }
  conns_.swap(scratch_);
  // Completions we could not push yet on connections that left the table: no longer ours to push.
  std::size_t kept = 0;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    if (find(pending_[i].k) == nullptr) {
      let_go(pending_[i].chunk);
      continue;
    }
    pending_[kept++] = pending_[i];
  }
  pending_.resize(kept);
  next_ = 0;
  gen_ = gen;
  ss_->seen_generation.store(gen, std::memory_order_release);  // ack: we read none of the removed ones
}

std::uint64_t StreamSubscriber::known_seq(const Conn& c) const noexcept {
  if (c.last_seq != kNoSeq) return c.last_seq;
  return c.c->start_seq.load(std::memory_order_relaxed);  // kNoSeq while its publisher has not connected
}

std::uint64_t StreamSubscriber::recall(std::uint64_t pub_id) const noexcept {
  for (const Known& k : known_)
    if (k.pub_id == pub_id) return k.seq;
  return kNoSeq;
}

void StreamSubscriber::remember(std::uint64_t pub_id, std::uint64_t seq) noexcept {
  if (pub_id == 0 || seq == kNoSeq) return;
  for (Known& k : known_)
    if (k.pub_id == pub_id) {
      k.seq = seq;
      return;
    }
  if (known_.size() < known_.capacity()) {
    known_.push_back({pub_id, seq});
  } else if (!known_.empty()) {
    known_[seq % known_.size()] = {pub_id, seq};  // full (many publishers came and went): forget one
  }
}

void StreamSubscriber::hand_over(StreamSubscriber& next) noexcept {
  for (const Conn& o : conns_) remember(o.pub_id, known_seq(o));
  for (const Known& k : known_) next.remember(k.pub_id, k.seq);
  for (Conn& n : next.conns_)
    if (n.last_seq == kNoSeq) n.last_seq = next.recall(n.pub_id);
  // Ack our slot's close now (refresh), not at some later receive nobody makes.
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
}

StreamSubscriber::Conn* StreamSubscriber::find(std::uint32_t k) noexcept {
  for (Conn& c : conns_)
    if (c.k == k) return &c;
  return nullptr;
}

void StreamSubscriber::set_held(std::uint32_t chunk, bool on) noexcept {
  std::atomic<std::uint64_t>& w = held_[chunk / 64];
  const std::uint64_t bit = 1ULL << (chunk % 64);
  // Relaxed load and store: this subscriber is the only writer. The broker reads the bits after our
  // death, or (a retired publisher's chunks) after an acquire load of our tail (S2 orders them).
  const std::uint64_t v = w.load(std::memory_order_relaxed);
  w.store(on ? (v | bit) : (v & ~bit), std::memory_order_relaxed);
}

void StreamSubscriber::publish_tail(Conn& c) noexcept {
  c.shared_tail = c.tail;
  c.c->tail.store(c.tail, std::memory_order_release);  // S2: the slots before it may be reused
  if (block_) EventCount(c.space).notify();            // a publisher may wait for room
}

void StreamSubscriber::end_batch() noexcept {
  batching_ = false;
  // G1': only connections still in our table (the broker may have freed and reused one meanwhile).
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
  for (Conn& c : conns_)
    if (c.shared_tail != c.tail) publish_tail(c);
}

bool StreamSubscriber::try_receive(Received& out) noexcept {
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
  if (!pending_.empty()) retry_pending();
  const std::size_t n = conns_.size();
  const std::uint32_t chunks = topic_->pool().chunk_count();
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t idx = (next_ + i) % n;
    Conn& c = conns_[idx];
    for (;;) {
      std::byte* slot = view_->slot(c.k, c.tail);
      StreamSlotHeader* h = header_at(slot);
      const std::uint64_t seq = h->seq.load(std::memory_order_acquire);  // S1': pairs with S1
      if (seq != c.tail) {
        if (seq == kSlotBusy || seq > c.tail) {
          // Overwritten (drop-oldest): this message is lost for us; the next one's sequence says so. The
          // slot holds position seq, so every position up to seq - depth is overwritten too: skip them in
          // one step (a subscriber many laps behind does not walk the laps).
          c.tail = seq != kSlotBusy && seq - c.tail >= view_->depth ? seq - view_->depth + 1 : c.tail + 1;
          publish_tail(c);
          continue;
        }
        break;  // nothing new on this connection
      }
      const std::uint16_t flags = h->flags;
      const std::uint64_t pub_seq = h->pub_seq;
      out.size = h->size;
      out.attrs_size = h->attrs_size;
      out.seq = pub_seq;
      out.publisher = c.pub_id;
      out.timestamp_ns = 0;
      if (flags & kSlotInline) {
        const std::byte* p = slot + sizeof(StreamSlotHeader);
        std::size_t room = kStreamInlineRoom;
        if (flags & kSlotStamped) {
          std::memcpy(&out.timestamp_ns, p, 8);
          p += 8;
          room -= 8;
        }
        // A publisher can only damage its own messages: clamp so that we never read past the slot.
        if (out.size > room) out.size = static_cast<std::uint32_t>(room);
        if (out.attrs_size > room - out.size) out.attrs_size = static_cast<std::uint16_t>(room - out.size);
        std::memcpy(out.bytes, p, out.size + out.attrs_size);
        if (validate_) {
          // S3': the copy is whole only if nobody overwrote the slot meanwhile.
          std::atomic_thread_fence(std::memory_order_acquire);
          if (h->seq.load(std::memory_order_relaxed) != c.tail) {
            ++c.tail;
            publish_tail(c);
            continue;
          }
        }
        out.is_chunk = false;
        ++c.tail;
        // In a batch the tail goes out every depth / 4 messages and at its end (an inline message leaves
        // nothing to recover, so a deferred tail costs nothing after a crash): a publisher waiting for room
        // then writes bursts of slots rather than one line at a time behind us, and is never held up by
        // more than a quarter of the ring.
        // Not under drop-oldest: there the publisher overwrites by our tail and would count a read message
        // as dropped.
        if (!batching_ || validate_ || c.tail - c.shared_tail >= tail_batch_) publish_tail(c);
      } else if (flags & kSlotChunk) {
        StreamChunkRef ref;
        std::memcpy(&ref, slot + sizeof(StreamSlotHeader), sizeof ref);
        if (validate_) {
          // S3' as for an inline message: a drop-oldest publisher may have overwritten the slot (it held an
          // inline message when we loaded seq) while we read flags and chunk. Not ours then: skip it.
          std::atomic_thread_fence(std::memory_order_acquire);
          if (h->seq.load(std::memory_order_relaxed) != c.tail) continue;  // re-read from the top
        }
        if (ref.chunk >= chunks) {  // a damaged slot: skip it
          ++c.tail;
          publish_tail(c);
          continue;
        }
        // The taking step (stream_layout.hpp): record it, mark the chunk held, then move the tail.
        ss_->taking.pos.store(c.tail, std::memory_order_relaxed);
        ss_->taking.cc.store(step_cc(c.k, ref.chunk), std::memory_order_relaxed);
        set_held(ref.chunk, true);
        SHMBUS_FAULT_POINT("stream.sub.after_held");
        ++c.tail;
        publish_tail(c);  // S2: orders the held bit before it
        ss_->taking.cc.store(0, std::memory_order_relaxed);
        out.is_chunk = true;
        out.chunk = ref.chunk;
        out.conn = c.k;
        // The chunk's header line only when there is a stamp to read: otherwise the payload is all the
        // subscriber touches.
        if (flags & kSlotStamped) out.timestamp_ns = topic_->header(ref.chunk)->timestamp_ns;
      } else {
        ++c.tail;  // neither: a damaged slot
        publish_tail(c);
        continue;
      }
      // The first message of a connection counts from where the publisher stood when it connected (the
      // slot's acquire above orders start_seq, written before the publisher's first commit).
      const std::uint64_t before = known_seq(c);
      out.missed = before != kNoSeq && pub_seq > before + 1 ? pub_seq - before - 1 : 0;
      c.last_seq = pub_seq;
      ss_->delivered.store(++delivered_, std::memory_order_relaxed);
      next_ = idx + 1;
      return true;
    }
  }
  return false;
}

bool StreamSubscriber::push_completion(Conn& c, std::uint32_t chunk) noexcept {
  const std::uint64_t h = c.comp_head;
  if (h - c.cached_comp_tail >= view_->comp_depth) {
    c.cached_comp_tail = c.c->comp_tail.load(std::memory_order_acquire);  // C2'
    if (h - c.cached_comp_tail >= view_->comp_depth) return false;
  }
  // The releasing step (stream_layout.hpp): record it, push, clear the held bit.
  ss_->releasing.pos.store(h, std::memory_order_relaxed);
  ss_->releasing.cc.store(step_cc(c.k, chunk), std::memory_order_relaxed);
  view_->comp_cell(c.k, h).store(completion_cell(h, chunk), std::memory_order_release);  // C1
  SHMBUS_FAULT_POINT("stream.sub.after_completion");
  c.comp_head = h + 1;
  c.c->comp_head.store(h + 1, std::memory_order_relaxed);  // informational: recovery
  set_held(chunk, false);
  ss_->releasing.cc.store(0, std::memory_order_relaxed);
  EventCount(c.space).notify();  // a publisher may wait for a chunk
  return true;
}

void StreamSubscriber::let_go(std::uint32_t chunk) noexcept {
  // The connection left our table: the broker closed our slot, or the publisher is gone. The broker
  // may write these words now too (it gives back what we released), hence read-modify-writes, and
  // release: our reads of the chunk are done before the broker acts on the bit.
  const std::uint64_t bit = 1ULL << (chunk % 64);
  const std::uint64_t o = topic_->pool().header(chunk).owner.load(std::memory_order_relaxed);
  const std::uint64_t pub = o & 0xffffffffULL;
  if (is_slot_owner(o) && pub < view_->max_publishers &&
      view_->pubs[pub].state.load(std::memory_order_relaxed) == kPubActive) {
    // Its publisher lives: mark it released; the broker gives it back on the closing connection.
    view_->rel_of(slot_)[chunk / 64].fetch_or(bit, std::memory_order_release);
    return;
  }
  // Its publisher is gone: clear the bit; the broker frees the chunk once nobody holds it.
  held_[chunk / 64].fetch_and(~bit, std::memory_order_release);
}

void StreamSubscriber::release(std::uint32_t k, std::uint32_t chunk) noexcept {
  if (chunk >= topic_->pool().chunk_count()) return;
  // G1': a connection the broker took away is not ours to push to any more (it may be another pair's now).
  if (const std::uint64_t gen = view_->generation->load(std::memory_order_acquire); gen != gen_) refresh(gen);
  Conn* c = find(k);
  if (c == nullptr) {
    let_go(chunk);
    return;
  }
  if (c->orphan) {
    set_held(chunk, false);  // the publisher is gone: the broker frees the chunk once nobody holds it
    return;
  }
  if ((!pending_.empty() || !push_completion(*c, chunk)) && pending_.size() < pending_.capacity())
    pending_.push_back({k, chunk});  // still held; retried at the next receive
}

void StreamSubscriber::retry_pending() noexcept {
  std::size_t kept = 0;
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    const Pending p = pending_[i];
    Conn* c = find(p.k);
    if (c == nullptr || c->orphan) {
      if (c == nullptr)
        let_go(p.chunk);
      else
        set_held(p.chunk, false);
      continue;
    }
    if (kept == 0 && push_completion(*c, p.chunk)) continue;  // keep order: stop at the first refusal
    pending_[kept++] = p;
  }
  pending_.resize(kept);
}

}  // namespace shmbus::detail
