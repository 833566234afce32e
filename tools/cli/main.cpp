// The `ekva` command: sets up CLI11 and dispatches to the subcommands, one file each
// (cmd_generate.cpp, cmd_info.cpp, cmd_calibrate.cpp, cmd_eval.cpp, cmd_roofline.cpp,
// cmd_plan.cpp).
//   ekva generate -m DIR -p TEXT -n N [--temperature T --top-k K --top-p P --seed S] [--json]
//   ekva info -m DIR
//   ekva calibrate -m DIR --data FILE -o profile.json
//   ekva eval ...
//   ekva roofline probe|hardware|report ...
//   ekva plan --model DIR --context N --batch B [--tpot-ms T] (--probe FILE | --hardware NAME)
// Exit codes: 0 success, 1 bad input (ekva::Error), 2 bad command-line use, 3 internal error.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "cli_util.h"
#include "commands.h"
#include "ekva/error.h"
#ifdef EKVA_HAVE_CUDA
#include "cuda/register.h"
#endif

int main(int argc, char** argv) {
#ifdef EKVA_HAVE_CUDA
  ekva::cuda::register_cuda();  // --device cuda
#endif
  CLI::App app{"EKVA: MoE inference with an expert-aware compressed KV cache"};
  app.require_subcommand(1);

  ekva::cli::add_generate_command(app);
  ekva::cli::add_info_command(app);
  ekva::cli::add_calibrate_command(app);
  ekva::cli::add_eval_command(app);
  ekva::cli::add_roofline_command(app);
  ekva::cli::add_plan_command(app);
  ekva::cli::add_place_command(app);

  try {
    app.parse(argc, argv);  // runs the callback of the subcommand given
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const ekva::cli::UsageError& e) {
    std::fprintf(stderr, "ekva: error: %s\n", e.what());
    return 2;
  } catch (const ekva::Error& e) {
    std::fprintf(stderr, "ekva: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ekva: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
