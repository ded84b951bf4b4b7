# Helpers shared by every folder's CMakeLists.txt: one per target kind.

# Sanitizers and fuzzing (docs/testing.md). `which`: "" or a comma-separated list of address,
# undefined and thread (thread alone). Undefined behaviour aborts (no recovery), so a test that
# hits it fails. With `fuzz` (KVTIER_FUZZ=ON, clang only) every target is also built with
# -fsanitize=fuzzer-no-link (libFuzzer's coverage) and `which` defaults to address,undefined;
# kvtier_fuzzer() links the libFuzzer driver into the fuzz targets alone.
function(kvtier_setup_sanitizer which fuzz)
  if(fuzz)
    if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      message(FATAL_ERROR "KVTIER_FUZZ=ON needs clang: configure a separate tree with "
                          "-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang")
    endif()
    if(which STREQUAL "")
      set(which "address,undefined")
    endif()
  endif()
  if(which STREQUAL "")
    return()
  endif()
  string(REPLACE "," ";" list "${which}")
  foreach(s ${list})
    if(NOT s MATCHES "^(address|thread|undefined)$")
      message(FATAL_ERROR
              "KVTIER_SANITIZE is a comma-separated list of address, undefined, thread; got '${which}'")
    endif()
  endforeach()
  if("thread" IN_LIST list AND NOT which STREQUAL "thread")
    message(FATAL_ERROR "KVTIER_SANITIZE=thread combines with no other sanitizer")
  endif()
  set(flags -fsanitize=${which} -fno-omit-frame-pointer)
  if("undefined" IN_LIST list)
    list(APPEND flags -fno-sanitize-recover=undefined)
  endif()
  if(fuzz)
    list(APPEND flags -fsanitize=fuzzer-no-link)
  endif()
  # Not for nvcc (a sanitizer tree builds without CUDA; docs/testing.md).
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${flags}>")
  add_link_options(-fsanitize=${which})
  # ThreadSanitizer builds load an instrumented abseil (deploy/sanitizers/tsan-abseil.sh):
  # DT_RPATH, not RUNPATH, so that it also serves the libraries (gRPC) that load abseil.
  if(which STREQUAL "thread" AND KVTIER_TSAN_LIBS)
    add_link_options(-Wl,--disable-new-dtags,-rpath,${KVTIER_TSAN_LIBS})
  endif()
endfunction()

# A macro, not a function: enable_language(CUDA) must run in the top-level scope or CMake
# loses the CUDA rule variables.
macro(kvtier_setup_cuda mode)
  set(KVTIER_HAVE_CUDA OFF)
  if(NOT "${mode}" STREQUAL "OFF")
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      # CMake 3.25 knows no nvcc flag for CUDA 20; the .cu files are C++17.
      set(CMAKE_CUDA_STANDARD 17)
      set(CMAKE_CUDA_STANDARD_REQUIRED ON)
      enable_language(CUDA)
      find_package(CUDAToolkit REQUIRED)
      set(KVTIER_HAVE_CUDA ON)
    elseif("${mode}" STREQUAL "ON")
      message(FATAL_ERROR "KVTIER_CUDA=ON but no CUDA compiler was found")
    endif()
  endif()
endmacro()

set(KVTIER_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)

# ---- Targets and layers (docs/architecture.md, "Layers") ----------------------------------
#
# Every kvtier target is declared with one of the helpers below, and every folder with
# kvtier_layer() (top-level CMakeLists.txt). Two rules follow:
#  - A library exports only its own headers: kvtier_finish_targets() links the headers of the
#    folders its sources are in (not sub-folders) into ${CMAKE_BINARY_DIR}/include/<target> and
#    makes that its public include directory (PUBLIC_API adds the public API, include/). So a
#    target can include only the headers of the libraries it links.
#  - A library or binary may link only kvtier libraries of its own layer or of the layers its
#    layer DEPENDS on (binaries: BINARY_DEPENDS too), and no TESTONLY library; tests may link
#    anything. Configuring fails otherwise, naming the crossing (kvtier_check_layers in
#    cmake/layers.cmake, which tests/layers_test.cmake checks).

include(${CMAKE_CURRENT_LIST_DIR}/layers.cmake)

# kvtier_layer(folder [DEPENDS folder ...] [BINARY_DEPENDS folder ...]): a layer is a folder
# (relative to the repository root); sub-folders belong to it unless declared themselves.
function(kvtier_layer folder)
  cmake_parse_arguments(A "" "" "DEPENDS;BINARY_DEPENDS" ${ARGN})
  set_property(GLOBAL APPEND PROPERTY KVTIER_LAYERS "${folder}")
  set_property(GLOBAL PROPERTY "KVTIER_LAYER_DEPENDS_${folder}" "${A_DEPENDS}")
  set_property(GLOBAL PROPERTY "KVTIER_LAYER_BINARY_DEPENDS_${folder}" "${A_BINARY_DEPENDS}")
endfunction()

function(_kvtier_register name kind)
  set_property(GLOBAL APPEND PROPERTY KVTIER_TARGETS ${name})
  set_target_properties(${name} PROPERTIES KVTIER_KIND ${kind})
endfunction()

# kvtier_library(name SRCS a.cc ... DEPS target ... [TESTONLY] [PUBLIC_API])
# TESTONLY: helpers for tests (fakes, fixtures); only tests and other TESTONLY libraries may
# link it. PUBLIC_API: implements part of include/kvtier/ and exports it.
function(kvtier_library name)
  cmake_parse_arguments(A "TESTONLY;PUBLIC_API" "" "SRCS;DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SRCS})
  target_link_libraries(${name} PUBLIC ${A_DEPS})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${KVTIER_WARNINGS}>)
  if(A_PUBLIC_API)
    target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/include)
  endif()
  _kvtier_register(${name} library)
  set_target_properties(${name} PROPERTIES KVTIER_TESTONLY "${A_TESTONLY}")
endfunction()

# kvtier_binary(name SRCS main.cc ... DEPS target ...)
function(kvtier_binary name)
  cmake_parse_arguments(A "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${A_SRCS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  target_compile_options(${name} PRIVATE ${KVTIER_WARNINGS})
  _kvtier_register(${name} binary)
endfunction()

# kvtier_test(name LABEL unit|integration|gpu SRCS x_test.cc ... DEPS target ...)
# Tests see KVTIER_BIN_DIR (where the project's binaries land) as a compile definition.
function(kvtier_test name)
  cmake_parse_arguments(A "" "LABEL" "SRCS;DEPS" ${ARGN})
  if(NOT A_LABEL)
    set(A_LABEL unit)
  endif()
  add_executable(${name} ${A_SRCS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${KVTIER_WARNINGS})
  target_compile_definitions(${name} PRIVATE KVTIER_BIN_DIR="${CMAKE_BINARY_DIR}/bin"
                                             KVTIER_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  gtest_discover_tests(${name} PROPERTIES LABELS ${A_LABEL} DISCOVERY_TIMEOUT 60)
  _kvtier_register(${name} test)
  set_target_properties(${name} PROPERTIES KVTIER_LABEL ${A_LABEL})
endfunction()

# kvtier_fuzzer(name SRCS x_fuzzer.cc ... DEPS target ...) (KVTIER_FUZZ=ON): a libFuzzer
# binary in ${CMAKE_BINARY_DIR}/fuzz/, test-only like a test, and a unit test that runs it once
# over its checked-in corpus fuzz/corpus/<name without _fuzzer>/ (docs/testing.md).
function(kvtier_fuzzer name)
  cmake_parse_arguments(A "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${A_SRCS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  target_compile_options(${name} PRIVATE ${KVTIER_WARNINGS})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  string(REGEX REPLACE "_fuzzer$" "" corpus ${name})
  add_test(NAME ${name}_corpus
           COMMAND ${name} -runs=0 ${CMAKE_CURRENT_SOURCE_DIR}/corpus/${corpus})
  set_tests_properties(${name}_corpus PROPERTIES LABELS unit)
  _kvtier_register(${name} test)
  set_target_properties(${name} PROPERTIES KVTIER_LABEL unit)
endfunction()

# The folder of `dir` relative to the repository root.
function(_kvtier_folder dir out)
  file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${dir})
  set(${out} "${rel}" PARENT_SCOPE)
endfunction()

# Gives every kvtier target its include directory and checks the layers. Call once, after
# every folder is added.
function(kvtier_finish_targets)
  get_property(targets GLOBAL PROPERTY KVTIER_TARGETS)
  get_property(layers GLOBAL PROPERTY KVTIER_LAYERS)
  set(edges "")
  set(testonly "")
  # Every test program and fuzzer, with the binaries they start (their dependencies): what a
  # sanitizer tree builds (deploy/build.sh asan|tsan; docs/testing.md).
  add_custom_target(kvtier_tests)
  # Everything but the unit-test programs: the binaries, benchmarks and the integration and gpu
  # test programs. CI's plain tree builds this; the unit tests build and run in its sanitizer
  # tree (deploy/test.sh; docs/testing.md, "What CI runs").
  add_custom_target(kvtier_no_unit_tests)
  foreach(t ${targets})
    get_target_property(kind ${t} KVTIER_KIND)
    get_target_property(label ${t} KVTIER_LABEL)
    if(kind STREQUAL "test")
      add_dependencies(kvtier_tests ${t})
    endif()
    if(NOT kind STREQUAL "library" AND NOT label STREQUAL "unit")
      add_dependencies(kvtier_no_unit_tests ${t})
    endif()
    get_target_property(src_dir ${t} SOURCE_DIR)
    get_target_property(srcs ${t} SOURCES)
    # Headers of the folders of the target's sources, linked under include/<target>/.
    set(folders "")
    foreach(s ${srcs})
      if(NOT IS_ABSOLUTE "${s}")
        set(s "${src_dir}/${s}")
      endif()
      get_filename_component(d "${s}" DIRECTORY)
      string(FIND "${d}" "${PROJECT_SOURCE_DIR}/" at)
      if(at EQUAL 0)
        list(APPEND folders "${d}")
      endif()
    endforeach()
    list(REMOVE_DUPLICATES folders)
    set(inc "${CMAKE_BINARY_DIR}/include/${t}")
    foreach(d ${folders})
      _kvtier_folder(${d} rel)
      file(GLOB headers CONFIGURE_DEPENDS "${d}/*.h" "${d}/*.cuh")
      file(MAKE_DIRECTORY "${inc}/${rel}")
      foreach(h ${headers})
        get_filename_component(hn "${h}" NAME)
        file(CREATE_LINK "${h}" "${inc}/${rel}/${hn}" SYMBOLIC)
      endforeach()
    endforeach()
    if(kind STREQUAL "library")
      target_include_directories(${t} PUBLIC "${inc}")
      get_target_property(is_testonly ${t} KVTIER_TESTONLY)
      if(is_testonly)
        list(APPEND testonly ${t})
        set(kind testonly)
      endif()
    else()
      target_include_directories(${t} PRIVATE "${inc}")
    endif()
    # Link edges to other kvtier targets, for the layer check.
    if(kind STREQUAL "test")
      continue()
    endif()
    _kvtier_folder(${src_dir} from)
    kvtier_layer_of("${from}" "${layers}" from_layer)
    if(from_layer STREQUAL "tests")  # test programs: anything goes
      continue()
    endif()
    get_target_property(deps ${t} LINK_LIBRARIES)
    foreach(dep ${deps})
      if(dep MATCHES "^kvtier_" AND TARGET ${dep})
        get_target_property(dep_dir ${dep} SOURCE_DIR)
        _kvtier_folder(${dep_dir} to)
        kvtier_layer_of("${to}" "${layers}" to_layer)
        list(APPEND edges "${kind}|${t}|${from_layer}|${dep}|${to_layer}")
      endif()
    endforeach()
  endforeach()
  set(rules "")
  foreach(l ${layers})
    get_property(deps GLOBAL PROPERTY "KVTIER_LAYER_DEPENDS_${l}")
    get_property(bdeps GLOBAL PROPERTY "KVTIER_LAYER_BINARY_DEPENDS_${l}")
    string(REPLACE ";" "," deps "${deps}")
    string(REPLACE ";" "," bdeps "${bdeps}")
    list(APPEND rules "${l}|${deps}|${bdeps}")
  endforeach()
  kvtier_check_layers("${rules}" "${edges}" "${testonly}" errors)
  if(errors)
    string(REPLACE ";" "\n  " errors "${errors}")
    message(FATAL_ERROR "layer crossings (docs/architecture.md, \"Layers\"):\n  ${errors}")
  endif()
endfunction()
