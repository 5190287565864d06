# Run bench/smc.py on the lent device machine's CPUs (its image has jax but neither
# blackjax nor particles). Before the call, copy their pure-Python packages from the venv
# (untracked, not committed):
#   mkdir -p bench/results/smc_site && cp -r .venv/lib/python3.11/site-packages/{blackjax,particles} bench/results/smc_site/
# ppl is assembled under /tmp/site the way the package-dir mapping installs it).
set -e
mkdir -p /tmp/site/ppl
cp -r ppl/. /tmp/site/ppl/
cp -r inference /tmp/site/ppl/inference
cp -r models /tmp/site/ppl/models
cp -r diagnostics /tmp/site/ppl/diagnostics
cp -r bench/results/smc_site/. /tmp/site/
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu SMC_BENCH_RESULTS=$OUT
python3 -c "import jax, numpyro, blackjax, particles; print(jax.__version__, numpyro.__version__, jax.devices())"
python3 bench/smc.py "$@" 2>&1 | tee $OUT/log.txt
