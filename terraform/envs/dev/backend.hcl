# `terraform init -backend-config=backend.hcl -backend-config="bucket=$TF_STATE_BUCKET"`
key    = "onnx-ship/dev/terraform.tfstate"
region = "us-east-1"
