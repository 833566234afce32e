// Subcommands of the `ekva` command, one file each. Each registers itself on the app;
// its callback runs when the subcommand is parsed and reports bad input by throwing
// ekva::Error (main turns that into a message and exit 1; cli::UsageError gives exit 2).
#pragma once

#include <CLI/CLI.hpp>

namespace ekva::cli {

void add_generate_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_calibrate_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_roofline_command(CLI::App& app);
void add_plan_command(CLI::App& app);
void add_place_command(CLI::App& app);

}  // namespace ekva::cli
