"""batchline's tooling, apart from the product: the `batchline` CLI, the local stack that
runs the whole pipeline on emulators, the in-memory ports that unit tests and the
benchmark use, and the tokenizer refresh. The deployed functions never import this
package (tests/infra checks their import graph), and it is not in their zip."""
