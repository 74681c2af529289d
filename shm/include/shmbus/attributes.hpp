// Attributes: a few key/value pairs that travel with a message (`{{"unit", "C"}, {"prio", 5}}`).
//
// An AttrValue is a string, an integer, a real or a boolean. It *views* its string (it owns no memory),
// so building an attribute list to publish never allocates: the list lives for the publish call.
// Received attributes view the message they came with and stay valid while that Sample or Delivery
// lives and is not moved.
//
// Wire format, per entry: u8 type (1 string, 2 integer, 3 real, 4 boolean), u8 key length, u16 value
// length (little endian), the key, then the value (integer and real: 8 bytes, boolean: 1 byte). A decoder
// never reads past the size it is given; a malformed entry ends the list.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmbus {

class AttrValue {
 public:
  enum class Type : std::uint8_t { none = 0, string = 1, integer = 2, real = 3, boolean = 4 };

  constexpr AttrValue() = default;
  constexpr AttrValue(std::string_view s) : type_(Type::string), s_(s) {}  // NOLINT: implicit by design
  constexpr AttrValue(const char* s) : AttrValue(std::string_view(s)) {}   // NOLINT
  AttrValue(const std::string& s) : AttrValue(std::string_view(s)) {}      // NOLINT
  template <std::integral I>
  requires(!std::same_as<I, bool>) constexpr AttrValue(I i)
      : type_(Type::integer), i_(static_cast<std::int64_t>(i)) {}       // NOLINT
  constexpr AttrValue(double d) : type_(Type::real), d_(d) {}           // NOLINT
  constexpr AttrValue(bool b) : type_(Type::boolean), i_(b ? 1 : 0) {}  // NOLINT

  constexpr Type type() const { return type_; }
  constexpr bool is_string() const { return type_ == Type::string; }
  constexpr bool is_int() const { return type_ == Type::integer; }
  constexpr bool is_real() const { return type_ == Type::real; }
  constexpr bool is_bool() const { return type_ == Type::boolean; }
  // The value, or an empty / zero one for another type.
  constexpr std::string_view as_string() const { return type_ == Type::string ? s_ : std::string_view(); }
  constexpr std::int64_t as_int() const { return type_ == Type::integer ? i_ : 0; }
  constexpr double as_real() const { return type_ == Type::real ? d_ : 0.0; }
  constexpr bool as_bool() const { return type_ == Type::boolean && i_ != 0; }

  friend constexpr bool operator==(const AttrValue& a, const AttrValue& b) {
    if (a.type_ != b.type_) return false;
    switch (a.type_) {
      case Type::string:
        return a.s_ == b.s_;
      case Type::real:
        return a.d_ == b.d_;
      case Type::none:
        return true;
      default:
        return a.i_ == b.i_;
    }
  }

 private:
  Type type_ = Type::none;
  std::string_view s_;
  std::int64_t i_ = 0;
  double d_ = 0;
};

struct Attr {
  std::string_view key;
  AttrValue value;
  friend constexpr bool operator==(const Attr&, const Attr&) = default;
};

// What publish() takes: a braced list, a span or a vector of Attr. A view: the entries must outlive the
// call.
class AttrList {
 public:
  constexpr AttrList() = default;
  constexpr AttrList(std::initializer_list<Attr> l) : s_(l.begin(), l.size()) {}  // NOLINT: implicit
  constexpr AttrList(std::span<const Attr> s) : s_(s) {}                          // NOLINT
  AttrList(const std::vector<Attr>& v) : s_(v.data(), v.size()) {}                // NOLINT
  constexpr bool empty() const { return s_.empty(); }
  constexpr std::size_t size() const { return s_.size(); }
  constexpr auto begin() const { return s_.begin(); }
  constexpr auto end() const { return s_.end(); }

 private:
  std::span<const Attr> s_;
};

// Encoded size of `attrs`, or 0 with a message in *why when a key is empty or longer than 255 bytes or a
// string longer than 65535 bytes. Empty lists encode to 0 bytes too (why stays empty).
std::size_t encoded_attrs_size(AttrList attrs, std::string* why);
// Encode into `out`, which has room for encoded_attrs_size(attrs) bytes. Returns the bytes written.
std::size_t encode_attrs(AttrList attrs, std::byte* out) noexcept;
// Decode every entry (values view `in`).
std::vector<Attr> decode_attrs(const std::byte* in, std::size_t size);
// The value of `key`, viewing `in`; no allocation.
std::optional<AttrValue> find_attr(const std::byte* in, std::size_t size, std::string_view key) noexcept;

}  // namespace shmbus
