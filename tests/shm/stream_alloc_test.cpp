// The stream data path allocates nothing (stream_port.hpp: "nothing here allocates ... after attach"):
// this executable replaces the global operator new and delete with counting versions and checks that, once
// warm, publish() + try_receive() + release() round trips (inline and chunk messages with attributes, a
// full ring under drop-oldest, a zero-deadline publish into a full ring under block) make no allocation.
//
// Its own executable: the replacement applies to the whole program. Only the calls between start() and
// stop() are counted (GoogleTest allocates freely around them).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>

#include "shmbus/attributes.hpp"
#include "shmbus/detail/stream_port.hpp"
#include "shmbus/detail/stream_supervisor.hpp"
#include "shmbus/topic.hpp"

// The replacements below hand malloc's memory to delete by design.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<std::uint64_t> g_news{0};
std::atomic<std::uint64_t> g_deletes{0};

void* counted_new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* counted_new_aligned(std::size_t n, std::align_val_t a) {
  if (g_counting.load(std::memory_order_relaxed)) g_news.fetch_add(1, std::memory_order_relaxed);
  void* p = nullptr;
  const std::size_t align = std::max(static_cast<std::size_t>(a), sizeof(void*));
  return posix_memalign(&p, align, n == 0 ? 1 : n) == 0 ? p : nullptr;
}
void counted_delete(void* p) noexcept {
  if (p != nullptr && g_counting.load(std::memory_order_relaxed))
    g_deletes.fetch_add(1, std::memory_order_relaxed);
  std::free(p);
}
}  // namespace

void* operator new(std::size_t n) {
  if (void* p = counted_new(n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  if (void* p = counted_new(n)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return counted_new(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return counted_new(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  if (void* p = counted_new_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t a) {
  if (void* p = counted_new_aligned(n, a)) return p;
  throw std::bad_alloc();
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_new_aligned(n, a);
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return counted_new_aligned(n, a);
}
void operator delete(void* p) noexcept {
  counted_delete(p);
}
void operator delete[](void* p) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::size_t) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  counted_delete(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  counted_delete(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  counted_delete(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  counted_delete(p);
}

namespace shmbus {
namespace {

using detail::Received;
using detail::SendStatus;
using detail::StreamPublisher;
using detail::StreamSubscriber;
using detail::StreamSupervisor;

// Counts the allocations made between its construction and stop().
class AllocationCounter {
 public:
  AllocationCounter() {
    g_news.store(0);
    g_deletes.store(0);
    g_counting.store(true);
  }
  ~AllocationCounter() { g_counting.store(false); }
  void stop() { g_counting.store(false); }
  std::uint64_t news() const { return g_news.load(); }
  std::uint64_t deletes() const { return g_deletes.load(); }
};

TEST(StreamAllocTest, TheCounterSeesAnAllocation) {
  AllocationCounter count;
  auto p = std::make_unique<std::string>(100, 'x');
  p.reset();
  count.stop();
  EXPECT_GE(count.news(), 1u);
  EXPECT_EQ(count.deletes(), count.news());
}

struct Stream {
  std::string domain = "sa" + std::to_string(getpid()) + "x" + std::to_string(next++);
  TopicHandle broker;
  std::unique_ptr<StreamPublisher> pub;
  std::unique_ptr<StreamSubscriber> subs[2];
  static inline int next = 0;

  explicit Stream(Overflow overflow) {
    TopicOptions o;
    o.kind = TopicKind::stream;
    o.depth = 8;
    o.max_size = 512;
    o.overflow = overflow;
    o.max_subscribers = 2;
    o.max_publishers = 1;
    o.attrs_max = 64;
    auto h = TopicHandle::create(domain, 1, "a.t", o);
    EXPECT_TRUE(h) << h.error().message();
    if (!h) return;
    broker = std::move(h).value();
    StreamSupervisor sup(broker);
    for (std::uint64_t port = 0; port < 2; ++port) {
      auto slot = sup.attach_subscriber(OwnerId::self(), port);
      auto t = TopicHandle::open(domain, 1);
      if (!slot || !t) return;
      auto s = StreamSubscriber::attach(std::make_shared<TopicHandle>(std::move(t).value()), *slot);
      if (!s) return;
      subs[port] = std::move(s).value();
    }
    auto slot = sup.attach_publisher(OwnerId::self(), 9, 99);
    auto t = TopicHandle::open(domain, 1);
    if (!slot || !t) return;
    auto p = StreamPublisher::attach(std::make_shared<TopicHandle>(std::move(t).value()), *slot, false);
    if (p) pub = std::move(p).value();
  }
  ~Stream() { (void)TopicHandle::remove(domain, 1); }
  bool ok() const { return pub && subs[0] && subs[1]; }
};

constexpr std::size_t kInline = 8;
constexpr std::size_t kChunk = 300;

// A publish with attributes, built on the stack.
SendStatus send(StreamPublisher& p, std::uint64_t seq, std::size_t n, const Deadline& d = Deadline::now()) {
  std::byte buf[kChunk];
  for (std::size_t i = 0; i < n; ++i) buf[i] = static_cast<std::byte>((seq + i) & 0xff);
  return p.publish(buf, n, {{"seq", static_cast<std::int64_t>(seq)}, {"unit", "C"}, {"ok", true}}, d);
}

// Take and give back everything; returns how many messages and how many bad ones.
struct Drained {
  std::uint64_t n = 0;
  std::uint64_t bad = 0;
};
Drained drain(StreamSubscriber& s) {
  Drained d;
  Received r;
  while (s.try_receive(r)) {
    ++d.n;
    const std::byte* attrs = r.is_chunk ? s.topic().attrs(r.chunk) : r.bytes + r.size;
    const auto seq = find_attr(attrs, r.attrs_size, "seq");
    if (!seq || static_cast<std::uint64_t>(seq->as_int()) != r.seq) ++d.bad;
    if (r.is_chunk) s.release(r.conn, r.chunk);
  }
  return d;
}

// One round: a ring's worth of inline and chunk messages, each read and given back by both subscribers.
void round_trips(Stream& st, std::uint64_t& seq, std::uint64_t& failures) {
  for (int i = 0; i < 8; ++i) {
    ++seq;
    if (send(*st.pub, seq, seq % 2 ? kInline : kChunk) != SendStatus::ok) ++failures;
  }
  for (auto& s : st.subs) {
    const Drained d = drain(*s);
    if (d.n != 8 || d.bad != 0) ++failures;
  }
}

TEST(StreamAllocTest, RoundTripsAndADropOldestOverflowAllocateNothingOnceWarm) {
  Stream st(Overflow::drop_oldest);
  ASSERT_TRUE(st.ok());
  std::uint64_t seq = 0, failures = 0;
  for (int i = 0; i < 20; ++i) round_trips(st, seq, failures);  // warm-up
  ASSERT_EQ(failures, 0u);

  AllocationCounter count;
  for (int i = 0; i < 500; ++i) round_trips(st, seq, failures);
  // A full ring of inline messages: the oldest slots are overwritten.
  for (int i = 0; i < 11; ++i)
    if (send(*st.pub, ++seq, kInline) != SendStatus::ok) ++failures;
  std::uint64_t got = 0;
  for (auto& s : st.subs) got += drain(*s).n;
  // A full ring of chunk messages: the new message is dropped instead.
  for (int i = 0; i < 8; ++i)
    if (send(*st.pub, ++seq, kChunk) != SendStatus::ok) ++failures;
  const SendStatus dropped = send(*st.pub, ++seq, kChunk);
  for (auto& s : st.subs) got += drain(*s).n;
  for (int i = 0; i < 50; ++i) round_trips(st, seq, failures);
  count.stop();

  EXPECT_EQ(failures, 0u);
  EXPECT_EQ(got, 2u * (8 + 8));
  EXPECT_EQ(dropped, SendStatus::some_missed);
  EXPECT_EQ(count.news(), 0u) << "allocations on the data path";
  EXPECT_EQ(count.deletes(), 0u);
}

TEST(StreamAllocTest, AZeroDeadlinePublishIntoAFullBlockingRingAllocatesNothing) {
  Stream st(Overflow::block);
  ASSERT_TRUE(st.ok());
  std::uint64_t seq = 0, failures = 0;
  for (int i = 0; i < 20; ++i) round_trips(st, seq, failures);
  ASSERT_EQ(failures, 0u);

  AllocationCounter count;
  std::uint64_t missed = 0;
  for (int i = 0; i < 100; ++i) {
    for (int k = 0; k < 8; ++k)
      if (send(*st.pub, ++seq, k % 2 ? kChunk : kInline) != SendStatus::ok) ++failures;
    missed += send(*st.pub, ++seq, kInline, Deadline::now()) == SendStatus::some_missed ? 1 : 0;
    missed += send(*st.pub, ++seq, kChunk, Deadline::now()) == SendStatus::some_missed ? 1 : 0;
    for (auto& s : st.subs)
      if (drain(*s).n != 8) ++failures;
  }
  for (int i = 0; i < 50; ++i) round_trips(st, seq, failures);
  count.stop();

  EXPECT_EQ(failures, 0u);
  EXPECT_EQ(missed, 200u);
  EXPECT_EQ(count.news(), 0u) << "allocations on the data path";
  EXPECT_EQ(count.deletes(), 0u);
}

}  // namespace
}  // namespace shmbus
