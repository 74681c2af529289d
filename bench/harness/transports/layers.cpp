// The layers of shmbus's data path, measured next to the floors and the client API in the same rounds, to
// show where the time goes (opt-in: run only when named in --transports; `scripts/bench core`).
//
//   layer-pool    ChunkPool alone, the owner-word hand-over of every step without the topic layer: the
//                 sender allocates from the free ring, copies the message in and pushes it to message
//                 ring 1; the receiver pops, copies out and releases to the free ring. (What a queue
//                 message costs, without the queue's depth check, counters and wake-ups.)
//   layer-stream  the stream connection as Publisher::publish and Subscriber::try_receive drive it, without
//                 the client API around it: StreamPublisher writes the message inline into the connection's
//                 next 128-byte slot (header, sequence, statistics, and after one fence the subscriber's
//                 wake word); StreamSubscriber polls the slot's seq word, copies the message out and moves
//                 its tail. busy: inline copy; zero-copy: a chunk loaned from the publisher's cache, 8 bytes
//                 written in place, its index published, read in place and given back on the completion
//                 ring. The receiver plays the broker's part (StreamSupervisor) for the topic it creates,
//                 in a private domain; the sender attaches its publisher slot the same way.
//
// Both serve the round trip and the one-way stream (one receiver per channel).
#include <unistd.h>

#include <cstdlib>
#include <memory>

#include "harness/channel.hpp"
#include "harness/transports/transports.hpp"
#include "shmbus/chunk_pool.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/owner.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/topic.hpp"

namespace shmbus::bench {
namespace {

// ---- layer-pool ----

struct PoolRoot {
  Ref<ChunkPoolShared> pool;
};

class PoolOut {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    auto seg = Segment::open(c.per_receiver(0));
    if (!seg) return seg.error().message();
    auto p = ChunkPool::attach(*seg, seg->root<PoolRoot>()->pool);
    if (!p) return p.error().message();
    pool_ = std::move(*p);
    seg_ = std::move(*seg);
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) seg_.unmap();
  }
  void send(const std::byte* msg, std::size_t n) {
    std::uint32_t c;
    while (pool_.try_allocate(c) != RingStatus::ok) {
    }
    std::memcpy(pool_.data(c), msg, n);
    pool_.header(c).size.store(static_cast<u32>(n), std::memory_order_relaxed);  // published by the push
    while (pool_.try_push(1, c) != RingStatus::ok) {
    }
  }

 private:
  Segment seg_;
  ChunkPool pool_;
};

class PoolIn {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 0) return {};
    buf_.resize(c.payload < 8 ? 8 : c.payload);
    ChunkPoolOptions o;
    o.chunk_count = static_cast<u32>(std::min<std::size_t>(c.depth, 1024) + 8);
    o.chunk_size = c.payload < 8 ? 8 : c.payload;
    o.ring_capacities = {std::bit_ceil(static_cast<u64>(o.chunk_count))};
    auto seg = Segment::create(c.per_receiver(0), {.size = 4096 + ChunkPool::footprint(o), .kind = "bench"});
    if (!seg) return seg.error().message();
    auto root = seg->allocate<PoolRoot>(1, kCacheLine);
    if (!root) return root.error().message();
    auto ref = ChunkPool::place(*seg, o);
    if (!ref) return ref.error().message();
    seg->at(*root)->pool = *ref;
    seg->set_root(*root);
    seg->publish();
    auto p = ChunkPool::attach(*seg, *ref);
    if (!p) return p.error().message();
    pool_ = std::move(*p);
    seg_ = std::move(*seg);
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0) seg_.unmap();
    if (phase == 1) (void)Segment::remove(c.per_receiver(0));
  }
  template <class F>
  void recv(F&& f) {
    std::uint32_t c;
    while (pool_.try_pop(1, c) != RingStatus::ok) {
    }
    const std::size_t n =
        std::min<std::size_t>(pool_.header(c).size.load(std::memory_order_relaxed), buf_.size());
    std::memcpy(buf_.data(), pool_.data(c), n);
    pool_.release(c);
    f(buf_.data(), n);
  }

 private:
  Segment seg_;
  ChunkPool pool_;
  std::vector<std::byte> buf_;
};

// ---- layer-stream ----

// A private domain for the layer's topics ("sbb<orchestrator pid>l": the orchestrator's cleanup of
// /dev/shm/shmbus.sbb<pid>* covers it), and a topic id per channel name (FNV-1a, never 0).
std::string layer_domain() {
  return "sbb" + std::to_string(::getppid()) + "l";
}
u64 topic_id(const std::string& name) {
  u64 h = 1469598103934665603ull;
  for (const char ch : name) h = (h ^ static_cast<unsigned char>(ch)) * 1099511628211ull;
  return (h & 0xffffffffull) + 1;
}

class StreamOut {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 2) return {};
    zero_copy_ = c.zero_copy();
    auto t = TopicHandle::open(layer_domain(), topic_id(c.name));
    if (!t) return t.error().message();
    topic_ = std::make_shared<TopicHandle>(std::move(*t));
    detail::StreamSupervisor sup(*topic_);
    auto slot = sup.attach_publisher(OwnerId::self(), 2, 1);
    if (!slot) return slot.error().message();
    auto p = detail::StreamPublisher::attach(topic_, *slot, false);
    if (!p) return p.error().message();
    pub_ = std::move(*p);
    return {};
  }
  void teardown(int phase, const ChannelCtx&) {
    if (phase == 0) {
      pub_.reset();
      topic_.reset();
    }
  }
  void send(const std::byte* msg, std::size_t n) {
    if (!zero_copy_) {
      if (pub_->publish(msg, n, {}, Deadline::after(std::chrono::seconds(10))) != detail::SendStatus::ok)
        fatal("layer-stream: publish failed");
      return;
    }
    std::uint32_t c;
    if (pub_->loan(c, Deadline::after(std::chrono::seconds(10))) != detail::SendStatus::ok)
      fatal("layer-stream: no chunk");
    std::memcpy(topic_->payload(c), msg, 8);  // zero copy: the sender writes its 8 bytes in place
    if (pub_->publish_chunk(c, n, {}, Deadline::after(std::chrono::seconds(10))) != detail::SendStatus::ok)
      fatal("layer-stream: publish failed");
  }

 private:
  bool zero_copy_ = false;
  std::shared_ptr<TopicHandle> topic_;
  std::unique_ptr<detail::StreamPublisher> pub_;
};

class StreamIn {
 public:
  std::string setup(int phase, const ChannelCtx& c) {
    if (phase != 0) return {};
    buf_.resize(c.payload < 8 ? 8 : c.payload);
    TopicOptions o;
    o.kind = TopicKind::stream;
    o.depth = c.depth;
    o.max_size = c.payload;
    o.max_subscribers = 1;
    o.max_publishers = 1;
    // As the shmbus transport: lossless for the one-way stream, drop-oldest (never full) for round trips.
    o.overflow = c.pattern == Pattern::stream ? Overflow::block : Overflow::drop_oldest;
    auto t = TopicHandle::create(layer_domain(), topic_id(c.name), c.name, o);
    if (!t) return t.error().message();
    topic_ = std::make_shared<TopicHandle>(std::move(*t));
    detail::StreamSupervisor sup(*topic_);
    auto slot = sup.attach_subscriber(OwnerId::self(), 1);
    if (!slot) return slot.error().message();
    auto s = detail::StreamSubscriber::attach(topic_, *slot);
    if (!s) return s.error().message();
    sub_ = std::move(*s);
    return {};
  }
  void teardown(int phase, const ChannelCtx& c) {
    if (phase == 0) {
      sub_.reset();
      topic_.reset();
    }
    if (phase == 1) (void)TopicHandle::remove(layer_domain(), topic_id(c.name));
  }
  template <class F>
  void recv(F&& f) {
    detail::Received r;
    while (!sub_->try_receive(r)) {
    }
    deliver(r, f);
  }
  // One-way stream: what is ready, with one tail store per batch (as Subscriber::try_receive_batch).
  template <class F>
  void recv_batch(F&& f, std::size_t max) {
    for (;;) {
      sub_->begin_batch();
      std::size_t n = 0;
      detail::Received r;
      while (n < max && sub_->try_receive(r)) {
        deliver(r, f);
        ++n;
      }
      sub_->end_batch();
      if (n != 0) return;
    }
  }

 private:
  template <class F>
  void deliver(const detail::Received& r, F& f) {
    if (r.is_chunk) {
      f(topic_->payload(r.chunk), r.size);  // zero copy: read in place, then give it back
      sub_->release(r.conn, r.chunk);
      return;
    }
    std::memcpy(buf_.data(), r.bytes, r.size);
    f(buf_.data(), r.size);
  }
  std::shared_ptr<TopicHandle> topic_;
  std::unique_ptr<detail::StreamSubscriber> sub_;
  std::vector<std::byte> buf_;
};

}  // namespace

std::unique_ptr<Bench> make_layer_bench(const BenchDesc& d, Part p, const Control& ctl, std::string* err) {
  const std::string t = d.transport;
  if (d.pattern != Pattern::roundtrip && d.pattern != Pattern::stream) {
    *err = t + " is a layer of the data path: round trip and one-way only";
    return nullptr;
  }
  if (t == "layer-pool") return std::make_unique<ChannelBench<PoolOut, PoolIn>>(d, p, ctl);
  if (t == "layer-stream") return std::make_unique<ChannelBench<StreamOut, StreamIn>>(d, p, ctl);
  *err = "unknown layer " + t;
  return nullptr;
}

}  // namespace shmbus::bench
