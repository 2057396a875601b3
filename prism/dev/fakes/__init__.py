"""Fakes of the external services, speaking their real wire formats over real HTTP: the
Hugging Face Hub, RunPod and Lambda Cloud. The tests use them, and `prism dev up
--fake-clouds` runs RunPod and Lambda Cloud ones so cloud deployments work offline."""
