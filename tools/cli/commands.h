// Subcommands of the `ekva` command that live in their own files. Each registers
// itself on the app; its callback runs when the subcommand is parsed and reports
// bad input by throwing ekva::Error (main turns that into a message and exit 1).
#pragma once

#include <CLI/CLI.hpp>

namespace ekva::cli {

void add_calibrate_command(CLI::App& app);
void add_eval_command(CLI::App& app);

}  // namespace ekva::cli
