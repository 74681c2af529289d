// Segment: a named, validated region of POSIX shared memory, and the arena that lays structures out in it.
//
// A segment is a file in /dev/shm ("shmbus.<name>") that starts with a SegmentHeader: magic, layout
// version, ABI hash, total size, creator and the offset of the creator's root object. Everything inside
// refers to everything else by Ref<T> (an offset from the segment's base), never by pointer, so each
// process may map it at a different address.
//
// Life cycle. The creator calls Segment::create(), which makes the file with O_EXCL, sizes it with
// posix_fallocate (so a full tmpfs is an error now, never a SIGBUS later), maps it with MAP_POPULATE,
// fills the header except the magic and hands back a Segment in the "building" state. The creator
// places its structures with arena(), names its root with set_root(), then calls publish(), which
// writes the magic last. Until then Segment::open() by anyone else answers Errc::incomplete.
//
// Why POSIX shm_open and not Boost.Interprocess: shared_memory_object can create with O_EXCL, but
// mapped_region cannot pre-fault (MAP_POPULATE), and neither lets us fstat the descriptor before the first
// touch nor fallocate it; those three are what make open() and create() unable to fault. memfd would
// let us seal the size (F_SEAL_SHRINK) but has no name a second process can open without the broker
// passing the descriptor; the broker issue may move to memfd + SCM_RIGHTS and keep this interface.
//
// Threads and processes: a Segment handle is owned by one thread at a time (move-only). The memory it maps
// is shared; what may touch which part is the business of the structures placed in it.
//
// Memory ordering: the creator writes every byte of the header and of its structures, then stores the
// magic with release (R-SEG). open() loads the magic with acquire (A-SEG) before reading anything else,
// so a process that sees the magic sees a fully built segment.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "shmbus/config.hpp"
#include "shmbus/result.hpp"

namespace shmbus {

inline constexpr std::uint64_t kSegmentMagic = 0x31535542'4d485321ULL;  // "!SHMBUS1" little-endian
inline constexpr std::size_t kSegmentKindLen = 16;

// The first 128 bytes of every segment.
struct SegmentHeader {
  std::atomic<std::uint64_t> magic;  // kSegmentMagic once published (R-SEG/A-SEG); 0 while building
  std::uint32_t layout_version;      // kLayoutVersion of the creator
  std::uint32_t header_size;         // sizeof(SegmentHeader) of the creator
  std::uint64_t abi_hash;            // abi_hash() of the creator
  std::uint64_t total_size;          // bytes, equal to the file's size
  std::int32_t creator_pid;
  std::uint32_t creator_start;  // OwnerId::start() of the creator
  std::uint64_t root_offset;    // offset of the root object, 0 if none
  std::uint64_t arena_used;     // bytes handed out by the arena (written only while building)
  char kind[kSegmentKindLen];   // what the creator placed ("pool", "test", ...), NUL-padded
  std::uint8_t reserved[kCacheLine - 72];
};
static_assert(sizeof(SegmentHeader) == kCacheLine);
static_assert(alignof(SegmentHeader) == 8);
static_assert(offsetof(SegmentHeader, magic) == 0);
static_assert(offsetof(SegmentHeader, total_size) == 24);
static_assert(offsetof(SegmentHeader, root_offset) == 40);
static_assert(offsetof(SegmentHeader, kind) == 56);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::is_standard_layout_v<SegmentHeader>);

// The ABI hash: layout version, cache-line constants, byte order, and the size and alignment of every
// shared structure this library places in a segment. Two builds that could misread each other's bytes
// have different hashes.
std::uint64_t abi_hash() noexcept;

// A typed offset into a segment. Trivially copyable, so it can itself live in shared memory.
template <typename T>
struct Ref {
  std::uint64_t offset = 0;  // from the segment base; 0 means null (the header is at 0)
  explicit operator bool() const { return offset != 0; }
};
static_assert(sizeof(Ref<int>) == 8);

struct CreateOptions {
  std::size_t size = 0;                  // total bytes, header included; rounded up to the page size
  unsigned mode = 0600;                  // set with fchmod, so the umask neither widens nor narrows it
  gid_t group = static_cast<gid_t>(-1);  // when set, fchown to this group (use with mode 0660)
  std::string_view kind = "";            // at most kSegmentKindLen - 1 bytes
};

struct OpenOptions {
  bool writable = true;
  std::string_view expect_kind = "";  // when non-empty, a segment of another kind is refused
};

class Segment {
 public:
  // Create "shmbus.<name>" exclusively. Names: 1..200 bytes of [A-Za-z0-9._-], not starting with '.'.
  static Result<Segment> create(std::string_view name, const CreateOptions& options);
  // Open and validate an existing, published segment. Never faults on a foreign or damaged file.
  static Result<Segment> open(std::string_view name, const OpenOptions& options = {});
  // Unlink the name. Mappings that exist stay valid until unmapped.
  static Status remove(std::string_view name);
  // Checks a segment name; the error names the offending byte and offset.
  static Status check_name(std::string_view name);

  Segment() = default;
  Segment(Segment&& other) noexcept;
  Segment& operator=(Segment&& other) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  // Unmap now (the name stays). Safe to call twice.
  void unmap() noexcept;

  bool mapped() const { return base_ != nullptr; }
  std::byte* base() const { return base_; }
  std::size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  SegmentHeader& header() const { return *reinterpret_cast<SegmentHeader*>(base_); }

  // Arena (only while building): `count` objects of T, aligned to max(alignof(T), align), zeroed.
  // Returns Errc::no_space when the segment is too small, naming what was asked and what is left.
  template <typename T>
  Result<Ref<T>> allocate(std::size_t count = 1, std::size_t align = alignof(T)) {
    auto off = allocate_bytes(sizeof(T) * count, align < alignof(T) ? alignof(T) : align);
    if (!off) return off.error();
    return Ref<T>{*off};
  }
  Result<std::uint64_t> allocate_bytes(std::size_t bytes, std::size_t align);
  std::size_t arena_left() const;

  // Name the root object, then publish (writes the magic with release; R-SEG).
  template <typename T>
  void set_root(Ref<T> root) {
    header().root_offset = root.offset;
  }
  void publish() noexcept;
  bool published() const;

  // Resolve a Ref. Aborts (a broken invariant) if [offset, offset + count*sizeof(T)) is outside the
  // mapping; use in_bounds() first for offsets read from a segment that was not validated yet.
  template <typename T>
  T* at(Ref<T> ref, std::size_t count = 1) const {
    SHMBUS_ASSERT(in_bounds(ref.offset, sizeof(T) * count));
    return reinterpret_cast<T*>(base_ + ref.offset);
  }
  template <typename T>
  T* root() const {
    return at(Ref<T>{header().root_offset});
  }
  bool in_bounds(std::uint64_t offset, std::uint64_t bytes) const {
    return offset <= size_ && bytes <= size_ - offset;
  }

 private:
  Segment(std::string name, std::byte* base, std::size_t size, bool building)
      : name_(std::move(name)), base_(base), size_(size), building_(building) {}

  std::string name_;
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  bool building_ = false;
};

// The shm_open name of a segment: "/shmbus.<name>".
std::string segment_shm_name(std::string_view name);

}  // namespace shmbus
