// The one exception type the EKVA library throws. Its message names the file,
// tensor or field at fault ("config.json: missing required field 'hidden_size'").
#pragma once

#include <stdexcept>

namespace ekva {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ekva
