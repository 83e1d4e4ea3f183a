;; `hoarder`: an aggregate written by hand against the canonical ABI of
;; `foldhost:plugin/aggregate@0.1.2`, for attacks on the host's memory
;; accounting that Rust cannot express.
;;
;;   Ping          emits `Ponged` (data `null`): it still works after an attack
;;   GrowTable     grows its table by 2^31 elements (16 GiB of host memory)
;;   GrowMemories  grows each of its two memories by 56 MiB and writes to every page
;;
;; An attack that succeeds rejects the command saying so: the host failed to
;; stop it. `plugins/artifacts/build.rs` splices extra declarations in at the
;; EXTRA marker below to make variants the host must refuse at load.
(module
  (memory $main (export "memory") 1)
  (memory $extra 1)
  (table $table 1 funcref)
  ;; @EXTRA@
  (global $heap (mut i32) (i32.const 4096))

  (data (memory $main) (i32.const 16) "hoarder")
  (data (memory $main) (i32.const 32) "1.0.0")
  (data (memory $main) (i32.const 48) "{}")
  (data (memory $main) (i32.const 56) "Ponged")
  (data (memory $main) (i32.const 64) "null")
  (data (memory $main) (i32.const 128) "grew a table by 2^31 elements: tables are not limited")
  (data (memory $main) (i32.const 256) "grew two memories by 56 MiB each: they are not limited together")
  (data (memory $main) (i32.const 384) "a growth failed without a trap")
  (data (memory $main) (i32.const 448) "unknown command: try Ping, GrowTable or GrowMemories")

  ;; A bump allocator for the host's arguments; nothing is ever freed.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (block $enough
      (loop $grow
        (br_if $enough
          (i32.le_u (global.get $heap) (i32.mul (memory.size $main) (i32.const 65536))))
        (if (i32.eq (memory.grow $main (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $ptr))

  ;; describe: func() -> description {name, kind, plugin-version, state-schema}
  (func (export "foldhost:plugin/aggregate@0.1.2#describe") (result i32)
    (i32.store (i32.const 1024) (i32.const 16))
    (i32.store (i32.const 1028) (i32.const 7))
    (i32.store8 (i32.const 1032) (i32.const 0))
    (i32.store (i32.const 1036) (i32.const 32))
    (i32.store (i32.const 1040) (i32.const 5))
    (i32.store (i32.const 1044) (i32.const 1))
    (i32.const 1024))

  ;; A `result<_, string>` that is ok.
  (func $ok (result i32)
    (i32.store8 (i32.const 1056) (i32.const 0))
    (i32.const 1056))

  (func (export "foldhost:plugin/aggregate@0.1.2#init") (param i32 i32 i32) (result i32)
    (call $ok))

  (func (export "foldhost:plugin/aggregate@0.1.2#apply") (param i32 i32 i32 i32) (result i32)
    (call $ok))

  ;; snapshot: func() -> list<u8>, empty
  (func (export "foldhost:plugin/aggregate@0.1.2#snapshot") (result i32)
    (i64.store (i32.const 1072) (i64.const 0))
    (i32.const 1072))

  ;; state: func() -> string, "{}"
  (func (export "foldhost:plugin/aggregate@0.1.2#state") (result i32)
    (i32.store (i32.const 1080) (i32.const 48))
    (i32.store (i32.const 1084) (i32.const 2))
    (i32.const 1080))

  ;; handle's ok: one new-event {event-type "Ponged", content-type json, data "null"}
  (func $ponged (result i32)
    (i32.store (i32.const 1100) (i32.const 56))
    (i32.store (i32.const 1104) (i32.const 6))
    (i32.store8 (i32.const 1108) (i32.const 0))
    (i32.store (i32.const 1112) (i32.const 64))
    (i32.store (i32.const 1116) (i32.const 4))
    (i32.store8 (i32.const 1136) (i32.const 0))
    (i32.store (i32.const 1140) (i32.const 1100))
    (i32.store (i32.const 1144) (i32.const 1))
    (i32.const 1136))

  ;; handle's error: command-error `case` (0 rejected, 1 invalid) with a message
  (func $refuse (param $case i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store8 (i32.const 1136) (i32.const 1))
    (i32.store8 (i32.const 1140) (local.get $case))
    (i32.store (i32.const 1144) (local.get $ptr))
    (i32.store (i32.const 1148) (local.get $len))
    (i32.const 1136))

  ;; Grows by 2^31 elements; the host must trap before it allocates them.
  (func $grow_table (result i32)
    (if (i32.eq (table.grow $table (ref.null func) (i32.const 0x80000000)) (i32.const -1))
      (then (return (call $refuse (i32.const 0) (i32.const 384) (i32.const 30)))))
    (call $refuse (i32.const 0) (i32.const 128) (i32.const 53)))

  ;; 56 MiB more in each memory, every new page written: within a 64 MiB limit
  ;; per memory, but not within 64 MiB for both together.
  (func $grow_memories (result i32)
    (local $old i32)
    (local.set $old (memory.grow $main (i32.const 896)))
    (if (i32.eq (local.get $old) (i32.const -1))
      (then (return (call $refuse (i32.const 0) (i32.const 384) (i32.const 30)))))
    (memory.fill $main (i32.mul (local.get $old) (i32.const 65536)) (i32.const 1) (i32.const 58720256))
    (local.set $old (memory.grow $extra (i32.const 896)))
    (if (i32.eq (local.get $old) (i32.const -1))
      (then (return (call $refuse (i32.const 0) (i32.const 384) (i32.const 30)))))
    (memory.fill $extra (i32.mul (local.get $old) (i32.const 65536)) (i32.const 1) (i32.const 58720256))
    (call $refuse (i32.const 0) (i32.const 256) (i32.const 63)))

  ;; handle: func(command-type: string, data: list<u8>) -> result<list<new-event>, command-error>
  ;; "Ping" is the only 4-byte command; the others differ at byte 4.
  (func (export "foldhost:plugin/aggregate@0.1.2#handle")
    (param $type i32) (param $len i32) (param i32 i32) (result i32)
    (if (i32.eq (local.get $len) (i32.const 4))
      (then (return (call $ponged))))
    (if (i32.ge_u (local.get $len) (i32.const 5))
      (then
        (if (i32.eq (i32.load8_u offset=4 (local.get $type)) (i32.const 84)) ;; 'T'
          (then (return (call $grow_table))))
        (if (i32.eq (i32.load8_u offset=4 (local.get $type)) (i32.const 77)) ;; 'M'
          (then (return (call $grow_memories))))))
    (call $refuse (i32.const 1) (i32.const 448) (i32.const 52)))
)
